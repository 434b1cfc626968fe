"""The training step with and without Grappler: a new model's first step, the steady step, validation.

    python benchmarks/bench_grappler.py --data PATH [--rounds 4] [--steps 60] [--models baseline,baseline_bn,resnet]

TensorFlow optimizes a function's graph with Grappler when the function is first called, so every
trial, a new model, pays it in its first training step. A trial runs its training step without
Grappler and validates with it (search/objective.py). This builds each model alternately for the
two, round after round in one process, on real FER2013 batches (batch 64, flip + rotation): the first
`fit` call of one step (tracing and optimizing included), the median steady step over --steps steps
(a third of them for the ResNet), and a steady inference pass over PublicTest (batch 256, as trials
validate; its first 4 batches for the ResNet) with the same option, to show what validation would
lose without Grappler. The models are bench_batchnorm.py's. Ratios are Grappler's time over the time
without it in the same run. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import benchlib
from bench_batchnorm import MODELS, alternate, build, parse_pairs, real_batches
from bench_optimizer import first_and_steady


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args, models = parse_pairs(p, argv)
    with benchlib.Machine("bench_grappler"):
        import keras

        batches, val = real_batches(args.data, args.steps)
        for name in models:
            print(f"\n{name}: {MODELS[name][0]}")
            (g_first, w_first), (g_step, w_step), (g_val, w_val) = alternate(
                ("grappler", "without"), name, args, batches, val, lambda kind, b, v: measure(keras, kind, name, b, v))
            print(f"  first fit: Grappler {g_first:.2f} s, without {w_first:.2f} s ({g_first / w_first:.2f}x); "
                  f"steady step: Grappler {1000 * g_step:.1f} ms, without {1000 * w_step:.1f} ms ({g_step / w_step:.2f}x); "
                  f"validation pass: Grappler {g_val:.2f} s, without {w_val:.2f} s ({g_val / w_val:.2f}x); "
                  f"medians of {args.rounds} rounds")
    return 0


def measure(keras, kind: str, name: str, batches, val) -> tuple[float, float, float]:
    """(seconds of the first one-step fit, median seconds of a steady step, seconds of the second
    inference pass over `val`) for one new model, every call with Grappler or without it."""
    import tensorflow as tf

    from search.objective import _without_grappler

    model = build(keras, "fused", name)  # the models as trials build them
    with _without_grappler() if kind == "without" else contextlib.nullcontext():
        first, step = first_and_steady(model, batches)
        forward = tf.function(lambda x: model(x, training=False))
        for _ in range(2):  # the first pass traces
            started = time.perf_counter()
            for x, _ in val:
                forward(x).numpy()
            inference = time.perf_counter() - started
    return first, step, inference


if __name__ == "__main__":
    sys.exit(main())
