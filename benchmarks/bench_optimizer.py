"""Fused optimizer updates against Keras's own: tracing cost per new model and steady step time.

    python benchmarks/bench_optimizer.py --data PATH [--optimizers adam,sgd] [--rounds 3] [--steps 60]

A search builds a new model every trial, and Keras writes an optimizer's update as a dozen ops a
variable, which TensorFlow traces once per model and runs every step. fer_models binds a fused
kernel (one op a variable) to the same Keras optimizer (fer_models/_optimizers.py). For each
optimizer, this builds the seed's CNN (the builder's defaults) with the fused and with Keras's own update, in
rotated order round after round in one process, on real FER2013 batches (batch 64, flip +
rotation), and prints: the first `fit` call of one step (building the optimizer's variables,
tracing, the step itself), and the median steady step over --steps steps. Ratios are Keras's time
over the fused time in the same run. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
import time

import benchlib


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchlib.add_data_flag(p)
    p.add_argument("--optimizers", default="adam,sgd", help="comma-separated: adam, sgd (default: both)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60, help="steady steps timed per model (default: 60)")
    args = p.parse_args(argv)
    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    if not set(optimizers) <= {"adam", "sgd"} or not optimizers:
        p.error("--optimizers takes adam and/or sgd")

    with benchlib.Machine("bench_optimizer"):
        import keras

        from search.data import Augment, load_fer2013, make_dataset

        data = load_fer2013(args.data)
        batches = make_dataset(data.train, batch_size=64, training=True, augment=Augment(flip=True, rotation=0.028),
                               seed=0).take(args.steps + 1).cache()
        for _ in batches:  # decode and augment once, outside every timing
            pass
        print(f"data       {len(data.train)} Training images; {args.steps} steady steps of batch 64 per model")
        results: dict[tuple[str, str], dict[str, list[float]]] = {}
        for r in range(args.rounds):
            for optimizer in optimizers:
                order = ("fused", "keras") if r % 2 == 0 else ("keras", "fused")
                for kind in order:
                    first, step = measure(keras, optimizer, kind, batches)
                    slot = results.setdefault((optimizer, kind), {"first": [], "step": []})
                    slot["first"].append(first)
                    slot["step"].append(step)
                    print(f"round {r + 1}  {optimizer:4s} {kind:5s}  first fit {first:.2f} s  "
                          f"steady step {1000 * step:.1f} ms", flush=True)
        print()
        for optimizer in optimizers:
            fused, plain = results[(optimizer, "fused")], results[(optimizer, "keras")]
            f_first, k_first = benchlib.median(fused["first"]), benchlib.median(plain["first"])
            f_step, k_step = benchlib.median(fused["step"]), benchlib.median(plain["step"])
            print(f"{optimizer:4s}  first fit: keras {k_first:.2f} s, fused {f_first:.2f} s ({k_first / f_first:.2f}x); "
                  f"steady step: keras {1000 * k_step:.1f} ms, fused {1000 * f_step:.1f} ms ({k_step / f_step:.2f}x); "
                  f"medians of {args.rounds} rounds")
    return 0


def measure(keras, optimizer: str, kind: str, batches) -> tuple[float, float]:
    """(seconds of the first one-step fit, median seconds of a steady step) for one new seed CNN."""
    from fer_models.baseline_cnn import build_baseline_cnn

    keras.backend.clear_session()
    learning_rate = 8e-4 if optimizer == "adam" else 1e-2  # the spaces' defaults for each
    model = build_baseline_cnn(optimizer=optimizer, learning_rate=learning_rate, seed=0)
    if kind == "keras":  # the same optimizer, its own update step: a fresh instance from the config
        model.compile(optimizer=type(model.optimizer).from_config(model.optimizer.get_config()),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert ("update_step" in vars(model.optimizer)) == (kind == "fused")
    return first_and_steady(model, batches)


def first_and_steady(model, batches) -> tuple[float, float]:
    """(seconds of a new model's first one-step fit, median seconds of a steady step over the other batches)."""
    started = time.perf_counter()
    model.fit(batches.take(1), epochs=1, shuffle=False, verbose=0)
    first = time.perf_counter() - started
    timer = step_timer()
    model.fit(batches.skip(1), epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    return first, benchlib.median(timer.steps[1:])  # the first of these still pays a dataset switch


def step_timer():
    """A Keras callback recording the seconds between consecutive training-batch ends in `steps`."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps: list[float] = []
            self._last: float | None = None

        def on_train_batch_begin(self, batch, logs=None):
            if self._last is None:
                self._last = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            self.steps.append(now - self._last)
            self._last = now

    return StepTimer()


if __name__ == "__main__":
    sys.exit(main())
