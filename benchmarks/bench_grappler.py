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

import benchlib
from bench_batchnorm import MODELS, alternate, build, parse_pairs, print_ratios, real_batches, time_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args, models = parse_pairs(p, argv)
    with benchlib.Machine("bench_grappler"):
        import keras

        batches, val = real_batches(args.data, args.steps)
        for name in models:
            print(f"\n{name}: {MODELS[name][0]}")
            medians = alternate(("grappler", "without"), name, args, batches, val,
                                lambda kind, b, v: measure(keras, kind, name, b, v))
            print_ratios(("Grappler", "without"), medians, args.rounds)
    return 0


def measure(keras, kind: str, name: str, batches, val) -> tuple[float, float, float]:
    """`time_model` of a new model (as trials build it), every call with Grappler or without it."""
    from search.objective import _without_grappler

    with _without_grappler() if kind == "without" else contextlib.nullcontext():
        return time_model(build(keras, "fused", name), batches, val)


if __name__ == "__main__":
    sys.exit(main())
