"""Fused BatchNormalization against Keras's own: tracing per new model, graph size, steady step, validation.

    python benchmarks/bench_batchnorm.py --data PATH [--rounds 4] [--steps 60] [--models baseline,baseline_bn,resnet]

Keras 3 writes a training-mode BatchNormalization as a dozen broadcasting ops, and their gradients as
twice as many, which TensorFlow traces once per model and runs every step; fer_models binds
TensorFlow's fused kernel to the same Keras layer (fer_models/_batchnorm.py). This builds each model
with the fused and with Keras's own layers, alternating round after round in one process: `baseline`
is the seed's CNN (the builder's defaults: one BatchNormalization a conv pair), `baseline_bn` the same
with one a convolution (conv_batchnorm), `resnet` the resnet_unfreeze space's default point (96x96,
conv4 and conv5 unfrozen with their BatchNormalization, SGD) from random weights, which train at the
same speed as ImageNet's. On real FER2013 batches (batch 64, flip + rotation) it prints the graph ops
of the traced training step, the first `fit` call of one step (tracing included), the median steady
step over --steps steps (a third of them for the ResNet) and a steady inference pass over PublicTest
(batch 256, as the trials validate; its first 4 batches for the ResNet). Ratios are Keras's time over the fused time in the same run.
Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import benchlib
from bench_optimizer import first_and_steady


def main(argv: list[str] | None = None) -> int:
    def describe(keras, name: str, batches) -> None:
        for kind in ("fused", "keras"):
            print(f"  traced training step, {kind}: {graph_ops(keras, kind, name)} graph ops")

    return compare("bench_batchnorm", __doc__, argv, ("keras", "fused"), ("keras", "fused"), measure, describe)


def compare(benchmark: str, doc: str, argv: list[str] | None, kinds: tuple[str, str], labels: tuple[str, str],
            measure, describe=None) -> int:
    """The whole of a benchmark comparing two ways of training MODELS (its `main`): for each model chosen,
    `describe(keras, name, batches)` if given (figures of its own), then `measure(keras, kind, name, batches,
    val)` for both `kinds`, --rounds times (`alternate`), and their medians and ratios under `labels`."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    args, models = parse_pairs(p, argv)
    with benchlib.Machine(benchmark):
        import keras

        batches, val = real_batches(args.data, args.steps)
        for name in models:
            print(f"\n{name}: {MODELS[name][0]}")
            if describe is not None:
                describe(keras, name, batches)
            medians = alternate(kinds, name, args, batches, val, lambda kind, b, v: measure(keras, kind, name, b, v))
            print_ratios(labels, medians, args.rounds)
    return 0


def parse_pairs(p: argparse.ArgumentParser, argv: list[str] | None):
    """(arguments, models) of a benchmark comparing two ways of training MODELS, round after round."""
    benchlib.add_data_flag(p)
    p.add_argument("--rounds", type=int, default=4, help="pairs per model, order alternating (default: 4)")
    p.add_argument("--steps", type=int, default=60, help="steady steps timed per model (default: 60)")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated, of: {', '.join(MODELS)} (default: all)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.steps < 6:
        p.error("--rounds must be at least 1 and --steps at least 6")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or not set(models) <= set(MODELS):
        p.error(f"--models takes {', '.join(MODELS)}")
    return args, models


def real_batches(path, steps: int):
    """(steps + 1 training batches of 64 with flip + rotation, PublicTest in batches of 256), both
    decoded and augmented once, outside every timing."""
    from search.data import Augment, load_fer2013, make_dataset

    data = load_fer2013(path)
    batches = make_dataset(data.train, batch_size=64, training=True, augment=Augment(flip=True, rotation=0.028),
                           seed=0).take(steps + 1).cache()
    val = make_dataset(data.val, batch_size=256, training=False).cache()
    for dataset in (batches, val):
        for _ in dataset:
            pass
    print(f"data       {len(data.train)} Training images; {steps} steady steps of batch 64 per model")
    return batches, val


def alternate(kinds: tuple[str, str], name: str, args, batches, val, measure):
    """Run `measure(kind, batches, val)` for both kinds, --rounds times, order alternating, printing each
    round; return the medians ((first fit, first fit), (steady step, ...), (validation pass, ...)), the
    two kinds in the order given. The ResNet gets a third of the steps and 4 validation batches."""
    steps = args.steps // 3 if name == "resnet" else args.steps
    val_batches = 4 if name == "resnet" else -1  # all of PublicTest would take the ResNet 27 s a pass
    results: dict[str, dict[str, list[float]]] = {kind: {} for kind in kinds}
    for r in range(args.rounds):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            first, step, inference = measure(kind, batches.take(steps + 1), val.take(val_batches))
            for metric, value in (("first", first), ("step", step), ("inference", inference)):
                results[kind].setdefault(metric, []).append(value)
            print(f"  round {r + 1}  {kind:8s}  first fit {first:.2f} s  steady step {1000 * step:.1f} ms  "
                  f"validation pass {inference:.2f} s", flush=True)
    return tuple(tuple(benchlib.median(results[kind][metric]) for kind in kinds)
                 for metric in ("first", "step", "inference"))


MODELS = {  # name: (what it is, builder, keyword arguments)
    "baseline": ("the seed's CNN, one BatchNormalization a conv pair", "baseline_cnn", {}),
    "baseline_bn": ("the seed's CNN, one BatchNormalization a convolution", "baseline_cnn", {"conv_batchnorm": True}),
    "resnet": ("ResNet50 + head, 96x96, conv4 and conv5 unfrozen with their BatchNormalization, from random weights",
               "resnet50_transfer", {"weights": None}),
}


def build(keras, kind: str, name: str):
    """A new model whose BatchNormalization layers are fused, or Keras's own ("keras")."""
    from fer_models import get_builder

    _, builder, kwargs = MODELS[name]
    keras.backend.clear_session()
    model = get_builder(builder)(**kwargs, seed=0)
    norms = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        if kind == "keras" and "call" in vars(layer):
            vars(layer).pop("call")  # the class's call again: Keras's own
        assert ("call" in vars(layer)) == (kind == "fused")
    return model


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):  # ResNet50 is one layer of the transfer model
            yield from _all_layers(layer)


def graph_ops(keras, kind: str, name: str) -> int:
    """Operations in the traced training step of a new model (one batch's shapes)."""
    import numpy as np
    import tensorflow as tf

    model = build(keras, kind, name)
    model.optimizer.build(model.trainable_variables)
    x, y = tf.zeros((64, 48, 48, 1)), tf.constant(np.zeros(64, "int32"))
    graph = tf.function(model.train_step).get_concrete_function((x, y)).graph
    return sum(Counter(op.type for op in graph.get_operations()).values())


def measure(keras, kind: str, name: str, batches, val) -> tuple[float, float, float]:
    """`time_model` of a new model with the fused or Keras's BatchNormalization."""
    return time_model(build(keras, kind, name), batches, val)


def time_model(model, batches, val) -> tuple[float, float, float]:
    """(seconds of the first one-step fit, median seconds of a steady step, seconds of the second
    inference pass over `val`) for a new model."""
    import tensorflow as tf

    first, step = first_and_steady(model, batches)
    forward = tf.function(lambda x: model(x, training=False))
    for _ in range(2):  # the first pass traces
        started = time.perf_counter()
        for x, _ in val:
            forward(x).numpy()
        inference = time.perf_counter() - started
    return first, step, inference


def print_ratios(labels: tuple[str, str], medians, rounds: int) -> None:
    """One line: each metric of `alternate`'s medians for both kinds, and the first's time over the second's."""
    parts = []
    for metric, (a, b) in zip(("first fit", "steady step", "validation pass"), medians):
        shown = [f"{1000 * t:.1f} ms" if metric == "steady step" else f"{t:.2f} s" for t in (a, b)]
        parts.append(f"{metric}: {labels[0]} {shown[0]}, {labels[1]} {shown[1]} ({a / b:.2f}x)")
    print(f"  {'; '.join(parts)}; medians of {rounds} rounds")


if __name__ == "__main__":
    sys.exit(main())
