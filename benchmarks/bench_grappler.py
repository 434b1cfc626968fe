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

import contextlib
import sys

from bench_batchnorm import build, compare, time_model


def main(argv: list[str] | None = None) -> int:
    return compare("bench_grappler", __doc__, argv, ("grappler", "without"), ("Grappler", "without"), measure)


def measure(keras, kind: str, name: str, batches, val) -> tuple[float, float, float]:
    """`time_model` of a new model (as trials build it), every call with Grappler or without it."""
    from search.objective import _without_grappler

    with _without_grappler() if kind == "without" else contextlib.nullcontext():
        return time_model(build(keras, "fused", name), batches, val)


if __name__ == "__main__":
    sys.exit(main())
