"""Pruners side by side on the same recorded curves (target 1): what each would spend and keep.

    python benchmarks/replay_pruners.py --storage sqlite:///RUN/optuna.db --study bench-random \
        [--min-epochs 2] [--workers 2] [--draws 200]

Reads a study run without pruning (bench_search.py's random arm, or its tpe arm for the configurations
of a sampler that improves: every trial trained to the end) and replays its curves through each pruner
with `search.replay`: the same configurations in the same order, on as many simulated workers as the
run had, each epoch taking the seconds it took. For each pruner it prints the epoch-equivalents it
would have spent, the ratio to training everything, and the best validation accuracy among the trials
it would have let finish, against the run's own best. First it prints the floor: what training in full
only the trials that became the best so far, and stopping every other at the first epoch a pruner may,
would cost.

Hyperband puts trials in brackets by a hash of the study name and the trial number, so one replay is one
draw of that assignment. The first table uses the name the default arm of bench_search.py has
(bench-default); the second repeats the Hyperband pruners over --draws other names and prints the spread.
No training runs: the figures are read from the study and do not depend on the machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import benchlib


def pruners(space) -> list[tuple[str, object, bool]]:
    """(label, a function making the pruner afresh, whether it has Hyperband's brackets)."""
    import optuna

    from search.optuna_driver import (REDUCTION_FACTOR, ChancePruner, PooledHyperband, PromotionQuota, halving_rungs,
                                      make_pruner)

    low, high = space.budget.min_epochs, space.budget.epochs

    def chance(base):
        return ChancePruner(base, low, high)

    def optuna_hyperband():
        return optuna.pruners.HyperbandPruner(min_resource=low, max_resource=high, reduction_factor=REDUCTION_FACTOR)

    def halving(eta, quota=None):
        base = optuna.pruners.SuccessiveHalvingPruner(min_resource=low, reduction_factor=eta)
        if quota is not None:
            rungs = halving_rungs(low, high, eta)
            base = PromotionQuota(base, lambda study, trial: rungs, eta, leaders=quota == "leaders")
        return chance(base)

    def pooled(eta, quota=None):
        hyperband = PooledHyperband(low, high, eta)
        if quota is None:
            return chance(hyperband)
        return chance(PromotionQuota(hyperband, lambda study, trial: hyperband.rung_steps(hyperband.bracket(study, trial)),
                                     eta, leaders=quota == "leaders"))

    return [
        ("hyperband (the default: pooled rungs + chance rule)", lambda: make_pruner("hyperband", space), True),
        ("Optuna's Hyperband + chance rule", lambda: chance(optuna_hyperband()), True),
        ("Optuna's Hyperband alone", optuna_hyperband, True),
        ("successive halving (halving: quota, leaders go on, + chance rule)", lambda: make_pruner("halving", space), False),
        ("successive halving without the quota + chance rule", lambda: halving(3), False),
        ("median + chance rule", lambda: make_pruner("median", space), False),
        ("pooled Hyperband, eta 4, + chance rule", lambda: pooled(4), True),
        ("successive halving, eta 4, + chance rule", lambda: halving(4), False),
        ("pooled Hyperband + quota (leaders go on) + chance rule", lambda: pooled(3, "leaders"), True),
        ("pooled Hyperband + strict quota + chance rule", lambda: pooled(3, "strict"), True),
        ("successive halving + strict quota + chance rule", lambda: halving(3, "strict"), False),
        ("successive halving, eta 4, + quota (leaders go on) + chance rule", lambda: halving(4, "leaders"), False),
        ("successive halving, eta 4, + strict quota + chance rule", lambda: halving(4, "strict"), False),
    ]


def frontier(curves, min_epochs: int) -> tuple[list[int], int]:
    """(the trials that became the best so far, in trial order; the epochs of training those in full and
    stopping every other trial at `min_epochs`, or where it ended if sooner)."""
    bests, best, epochs = [], float("-inf"), 0
    for c in curves:
        value = max(c.values, default=float("-inf"))
        if value > best and not c.failed:
            bests.append(c.number)
            best = value
            epochs += len(c.values)
        else:
            epochs += min(len(c.values), min_epochs)
    return bests, epochs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", required=True, help="the run's storage URL, e.g. sqlite:///RUN/optuna.db")
    p.add_argument("--study", default="bench-random", help="a study run with --pruner none (default: bench-random)")
    p.add_argument("--min-epochs", type=int, help="no pruning before this epoch (default: the study's space's)")
    p.add_argument("--workers", type=int, default=2, help="simulated workers (default: 2)")
    p.add_argument("--name", default="bench-default", help="study name the first table's brackets come from")
    p.add_argument("--draws", type=int, default=200, help="bracket assignments for the spread (default: 200)")
    args = p.parse_args(argv)
    for flag, value in (("--workers", args.workers), ("--draws", args.draws), ("--min-epochs", args.min_epochs)):
        if value is not None and value < 1:
            p.error(f"{flag} must be at least 1, got {value}")

    with benchlib.Machine("replay_pruners", modules=("optuna",)):
        import optuna

        from search import records
        from search.replay import curves_from, replay
        from search.report import open_existing_study
        from search.storage import StorageError

        try:
            study, _ = open_existing_study(args.storage, args.study, Path("results"))
            curves = curves_from(study)
            if not any(c.values for c in curves):
                raise ValueError(f"study {args.study!r} has no trial with a recorded epoch")
            epochs = max(len(c.values) for c in curves)
            space = records.study_space(study)
            min_epochs = space.budget.min_epochs if args.min_epochs is None else args.min_epochs
            space = space.with_settings(epochs=epochs, min_epochs=min_epochs)
        except (ValueError, StorageError) as exc:  # UsageError is a ValueError
            p.error(str(exc))
        subset = space.budget.subset
        baseline = replay(curves, optuna.pruners.NopPruner(), study_name=args.name, workers=args.workers,
                          subset=subset)
        truth = baseline.best
        print(f"study      {args.study}: {len(curves)} trials, at most {epochs} epochs, subset {subset:g}; "
              f"pruning from epoch {space.budget.min_epochs}; {args.workers} simulated worker(s)")
        print(f"no pruning {baseline.epochs} epochs = {baseline.epoch_equivalents:.2f} epoch-equivalents, "
              f"best {truth.value:.4f} (trial {truth.number})")
        bests, least = frontier(curves, space.budget.min_epochs)
        print(f"the floor  {least} epochs, {baseline.epochs / least:.2f}x fewer: every trial that became the best so far "
              f"({', '.join(map(str, bests))}) trained in full, every other stopped at epoch {space.budget.min_epochs}; "
              f"no pruner keeps every new best for less\n")

        print(f"brackets as in a study named {args.name!r}:")
        for label, make, _ in pruners(space):
            r = replay(curves, make(), study_name=args.name, workers=args.workers, subset=subset)
            best = r.best
            kept = (f"best {best.value:.4f} (trial {best.number}), {100 * (best.value - truth.value):+.1f} points"
                    if best else "no trial trained to the end")
            print(f"  {label}: {r.epoch_equivalents:.2f} epoch-equivalents, {baseline.epochs / r.epochs:.2f}x fewer; {kept}")
            print(f"    epochs a trial: {' '.join(f'{o.number}:{o.epochs}' for o in r.outcomes)}; "
                  f"trained to the end: {', '.join(map(str, r.full()))}")

        print(f"\nover {args.draws} bracket assignments (study names draw-0 ... draw-{args.draws - 1}):")
        for label, make, bracketed in pruners(space):
            if not bracketed:
                continue
            ratios, gaps = [], []
            for i in range(args.draws):
                r = replay(curves, make(), study_name=f"draw-{i}", workers=args.workers, subset=subset)
                ratios.append(baseline.epochs / r.epochs)
                gaps.append(100 * (r.best.value - truth.value) if r.best else float("-inf"))
            both = sum(q >= 3 and g >= -1 for q, g in zip(ratios, gaps))
            print(f"  {label}: ratio median {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}), "
                  f">= 3x in {sum(q >= 3 for q in ratios)}; best within 1 point in {sum(g >= -1 for g in gaps)} "
                  f"(median gap {statistics.median(gaps):+.1f}); both in {both} of {args.draws}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
