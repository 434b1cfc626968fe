"""The training step traced as one function against Keras's two nested ones: graph size, a new model's
first step, the steady step.

    python benchmarks/bench_train_function.py --data PATH [--rounds 4] [--steps 60] [--models baseline,baseline_bn,resnet]

Keras's TensorFlow trainer traces a new model's training step into a `tf.function` of its own (so that
`jit_compile` can apply to it alone) called from a second one that reads the iterator; without XLA a
trial traces Keras's `train_step` straight into the one that reads the iterator
(`search.objective._train_in_one_function`). This builds each model alternately for the two, round
after round in one process, as trials build them (fused BatchNormalization and optimizer, the training
step without Grappler), on real FER2013 batches (batch 64, flip + rotation), and prints the graph
operations the first `fit` traces, the first `fit` call of one step (tracing and instantiating
included), the median steady step over --steps steps (a third of them for the ResNet) and a steady
inference pass over PublicTest (batch 256; its first 4 batches for the ResNet), which the change does
not touch. The models are bench_batchnorm.py's. Ratios are Keras's time over the one function's in the
same run. Prints figures; asserts nothing.
"""
from __future__ import annotations

import sys

from bench_batchnorm import build, compare, time_model

KINDS = ("keras", "one")  # Keras's two nested functions, the trial's one


def main(argv: list[str] | None = None) -> int:
    def describe(keras, name: str, batches) -> None:
        for kind in KINDS:
            graphs = traced_ops(keras, kind, name, batches.take(1))
            print(f"  graph operations the first fit traces, {kind}: {sum(graphs.values())} "
                  f"({', '.join(f'{graph} {ops}' for graph, ops in graphs.items())})")

    return compare("bench_train_function", __doc__, argv, KINDS, ("Keras's two", "one"), measure, describe)


def new_model(keras, kind: str, name: str):
    """A new model set up as a trial sets it up (its optimizer's and metrics' variables made before the
    first step), its training step traced Keras's way or as one function."""
    from search.objective import _build_compiled_metrics, _train_in_one_function

    model = build(keras, "fused", name)
    model.optimizer.build(model.trainable_variables)
    _build_compiled_metrics(model, model.output_shape[-1], one_hot=False)
    if kind == "one":
        _train_in_one_function(model)
    return model


def measure(keras, kind: str, name: str, batches, val) -> tuple[float, float, float]:
    """`time_model` of a new model, its training step without Grappler, as in a trial."""
    from search.objective import _without_grappler

    with _without_grappler():
        return time_model(new_model(keras, kind, name), batches, val)


def traced_ops(keras, kind: str, name: str, one_batch) -> dict[str, int]:
    """{function graph: operations made in it} while a new model's first fit of one step traces."""
    from tensorflow.python.framework import func_graph, ops

    from search.objective import _without_grappler

    model = new_model(keras, kind, name)
    counts: dict[str, int] = {}
    create = ops.Graph._create_op_internal

    def counting(graph, *args, **kwargs):
        if isinstance(graph, func_graph.FuncGraph):
            counts[graph.name] = counts.get(graph.name, 0) + 1
        return create(graph, *args, **kwargs)

    ops.Graph._create_op_internal = counting
    try:
        with _without_grappler():
            model.fit(one_batch, epochs=1, shuffle=False, verbose=0)
    finally:
        ops.Graph._create_op_internal = create
    return counts


if __name__ == "__main__":
    sys.exit(main())
