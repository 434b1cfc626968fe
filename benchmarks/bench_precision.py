"""Precision and XLA (target 5): training throughput of mixed_bfloat16, mixed_float16 and XLA against
float32, and the validation accuracy each reaches after the same epochs.

    python benchmarks/bench_precision.py --data PATH [--variants float32,mixed_bfloat16,float32+xla]
        [--subset 0.25] [--rounds 2] [--accuracy-epochs 8] [--accuracy-subset 0.5]

Throughput: every variant trains the space's default point for --epochs epochs through the real
trial path (`Objective`); the first epoch (tracing, XLA compilation) is left out and the training
seconds of the others (validation excluded) give images/s. Variants run in turn, round after round
in rotated order, so a shared machine's load falls on all of them; ratios are against float32 in
the same run. Accuracy: each precision trains --accuracy-epochs epochs, same seed, same data order.
mixed_float16 has no fast CPU kernels (the Objective refuses it without a GPU), so on a CPU it is
timed by single training steps against float32's (--step-probe). Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
import time

import benchlib

VARIANTS = ("float32", "mixed_bfloat16", "mixed_float16", "float32+xla", "mixed_bfloat16+xla")


def parse_variant(name: str) -> tuple[str, bool | None]:
    precision, _, xla = name.partition("+")
    return precision, (True if xla == "xla" else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchlib.add_data_flag(p)
    p.add_argument("--space", default="baseline_cnn")
    p.add_argument("--variants", default="float32,mixed_bfloat16,float32+xla",
                   help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--subset", type=float, default=0.1, help="throughput runs' fraction of Training (default: 0.1; "
                   "XLA runs are slow here)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per throughput run, the first not timed")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--accuracy", default="float32,mixed_bfloat16",
                   help="variants whose accuracy is compared ('' to skip)")
    p.add_argument("--accuracy-epochs", type=int, default=8)
    p.add_argument("--accuracy-subset", type=float, default=0.5)
    p.add_argument("--step-probe", default="mixed_float16", help="precisions too slow for whole epochs here "
                   "(the Objective refuses mixed_float16 without a GPU): time single training steps against "
                   "float32 instead ('' to skip)")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    accuracy = [v.strip() for v in args.accuracy.split(",") if v.strip()]
    bad = [v for v in variants + accuracy if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    if "float32" not in variants:
        p.error("--variants must include float32, the reference")

    with benchlib.Machine("bench_precision"):
        from search.data import load_fer2013
        from search.objective import Objective
        from search.space import load_space

        space = load_space(args.space)
        data = load_fer2013(args.data, labels=space.labels)
        config = space.defaults()
        print(f"workload   {space.model} default point, batch {config['batch_size']}; throughput on "
              f"{args.subset:g} of Training, {args.epochs} epochs a run (first untimed), {args.rounds} rounds",
              flush=True)

        seconds: dict[str, list[float]] = {v: [] for v in variants}
        first_epoch: dict[str, list[float]] = {v: [] for v in variants}
        n = 0
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for variant in order:
                precision, jit = parse_variant(variant)
                objective = Objective(data, space, log=None, precision=precision, jit=jit)
                n = len(objective.train_split(args.subset))
                timer = benchlib.epoch_timer(per_batch=True)
                objective(config, epochs=args.epochs, subset=args.subset, callbacks=[timer])
                seconds[variant] += timer.train_seconds[1:]
                first_epoch[variant].append(timer.train_seconds[0])
                print(f"  round {r + 1} {variant:<20} training seconds per epoch: "
                      f"{', '.join(f'{s:.2f}' for s in timer.train_seconds)}", flush=True)

        reference = n / benchlib.median(seconds["float32"])
        print(f"\n[5] training throughput, median steady epoch, {n} images, validation excluded:")
        for variant in variants:
            rate = n / benchlib.median(seconds[variant])
            print(f"    {variant:<20} {rate:7.0f} images/s  {rate / reference:5.2f}x float32   "
                  f"first epoch (tracing/compiling) {benchlib.median(first_epoch[variant]):.1f} s")

        probes = [v.strip() for v in args.step_probe.split(",") if v.strip()]
        if probes:
            reference_step = step_seconds(space, config, data, "float32")
            print(f"\n[5] one training step (batch {config['batch_size']}, traced, median of 2), built outside the "
                  f"Objective:\n    float32              {reference_step:7.3f} s")
            for precision in probes:
                step = step_seconds(space, config, data, precision)
                print(f"    {precision:<20} {step:7.3f} s  = {step / reference_step:.0f}x float32's time", flush=True)

        if accuracy:
            print(f"\n[5] validation accuracy after {args.accuracy_epochs} epochs on {args.accuracy_subset:g} of "
                  f"Training (seed 0, same data order):", flush=True)
            for variant in accuracy:
                precision, jit = parse_variant(variant)
                objective = Objective(data, space, log=None, precision=precision, jit=jit)
                result = objective(config, epochs=args.accuracy_epochs, subset=args.accuracy_subset)
                curve = " ".join(f"{h['val_accuracy']:.3f}" for h in result.history)
                print(f"    {variant:<20} best {result.value:.4f} (epoch {result.metrics['best_epoch']}), last "
                      f"{result.history[-1]['val_accuracy']:.4f}; curve {curve}", flush=True)
    return 0


def step_seconds(space, config: dict, data, precision: str, steps: int = 2) -> float:
    """Median seconds of a training step of the default point under `precision`, after a warm-up step."""
    import keras

    from fer_models import get_builder
    from search.objective import split_config

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(precision)
    try:
        model_kwargs, _ = split_config(config, _builder_params(space))
        model = get_builder(space.model)(**model_kwargs, num_classes=data.num_classes, seed=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = data.train.x[: config["batch_size"]].astype("float32")
    y = data.train.y[: config["batch_size"]]
    model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - started)
    return benchlib.median(times)


def _builder_params(space) -> set[str]:
    from fer_models import builder_defaults

    return set(builder_defaults(space.model))


if __name__ == "__main__":
    sys.exit(main())
