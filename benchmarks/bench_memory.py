"""Resident memory across many trials in one process (target 4).

    python benchmarks/bench_memory.py --data PATH [--trials 20] [--epochs 1] [--subset 0.02]

Runs a random search (no pruning) of tiny trials through the real path (`OptunaObjective` over
`Objective`, a SQLite study in a temporary folder), so every trial builds a different model, and
reads VmRSS from /proc/self/status after each. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
import tempfile

import benchlib


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchlib.add_data_flag(p)
    p.add_argument("--space", default="baseline_cnn")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--subset", type=float, default=0.02)
    args = p.parse_args(argv)

    with benchlib.Machine("bench_memory"), tempfile.TemporaryDirectory(prefix="fer-bench-memory-") as tmp:
        import numpy as np
        import optuna

        from search.data import load_fer2013
        from search.objective import Objective
        from search.optuna_driver import OptunaObjective
        from search.space import load_space

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space = load_space(args.space).with_settings(epochs=args.epochs, min_epochs=1, subset=args.subset)
        data = load_fer2013(args.data, labels=space.labels)
        objective = OptunaObjective(Objective(data, space, log=None), space)
        study = optuna.create_study(storage=f"sqlite:///{tmp}/optuna.db", direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner())
        before = benchlib.rss_mb()
        print(f"workload   {args.trials} random {space.model} trials of {args.epochs} epoch(s) on {args.subset:g} "
              f"of Training ({len(objective.objective.train_split(args.subset))} images), validation {len(data.val)}")
        print(f"rss        {before:.0f} MiB with the data loaded, before the first trial", flush=True)
        rss = []
        for i in range(args.trials):
            study.optimize(objective, n_trials=1)
            rss.append(benchlib.rss_mb())
            t = study.trials[-1]
            print(f"  trial {i + 1:>2} {t.state.name:<8} base_filters {t.params.get('base_filters')!s:>3} dense_units "
                  f"{t.params.get('dense_units')!s:>5}  rss {rss[-1]:7.1f} MiB", flush=True)
        slope = np.polyfit(np.arange(2, len(rss) + 1), rss[1:], 1)[0] if len(rss) > 2 else float("nan")
        print(f"\n[4] resident memory over {args.trials} trials: {rss[0] - before:+.0f} MiB in the first trial "
              f"(TensorFlow's one-time set-up), then {rss[-1] - rss[0]:+.0f} MiB from trial 1 to trial "
              f"{args.trials} ({slope:+.1f} MiB a trial, fitted); {rss[-1] - before:+.0f} MiB in all "
              f"(target <= 100 MB growth)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
