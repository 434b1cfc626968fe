"""Search efficiency on real FER2013 (target 1): the default search against random search without pruning.

Both arms run the same trials, epochs and training subset. The default search is random configurations
under the Hyperband pruner; the `tpe-hyperband` arm puts TPE's configurations under the same pruner.

    python benchmarks/bench_search.py --data PATH [--trials 12] [--epochs 9] [--subset 0.25]

Each arm is the real command line, `python -m search.run`, in a subprocess, on one SQLite file in
--workdir (a temporary folder unless given). The figures are read back from the stored trials:
an arm's cost in epoch-equivalents (one = one pass over all of Training) is the sum over its trials
of epochs run x subset, and its result is its best validation accuracy. Cost and accuracy do not
depend on the machine's load; the wall times printed beside them do.

With a kept --workdir, running the same command again resumes an unfinished arm and reuses a
finished one (its wall time then reads "reused"); with --summary-only it runs nothing and prints the
figures of the arms as they stand. When one arm stopped early (a --timeout in --common), the two arms
are also compared over the trials both finished.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import benchlib

ARMS = {
    # the CLI's defaults: random sampling, the Hyperband pruner, the space's min_epochs (TPE sampled here
    # before 2026-12-05: the tpe-hyperband arm)
    "default": [],
    "random": ["--sampler", "random", "--pruner", "none"],
    # Hyperband as its paper defines it, random configurations under the default pruner, whatever the defaults
    # are. Its trials are the random arm's (the same seeded draw per trial number), so the pair measures what
    # the pruner alone saves
    "hyperband": ["--sampler", "random"],
    # TPE under the default pruner: a sampler that models the trials so far
    "tpe-hyperband": ["--sampler", "tpe"],
    # TPE without pruning: every trial TPE picks trained to the end, so replay_pruners.py can run any pruner
    # over the configurations of an improving sampler (the random arm's are independent draws)
    "tpe": ["--sampler", "tpe", "--pruner", "none"],
}
PRUNED = ("default", "hyperband", "tpe-hyperband")  # the arms compared with the random one


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchlib.add_data_flag(p)
    p.add_argument("--space", default="baseline_cnn")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=9, help="most epochs a trial trains (default: 9)")
    p.add_argument("--subset", type=float, default=0.25, help="fraction of Training (default: 0.25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", default="default,random", help=f"comma-separated, of: {', '.join(ARMS)}")
    p.add_argument("--workdir", type=Path, help="keep the studies and outputs here (default: a temp folder)")
    p.add_argument("--extra", default="", help=f"more search.run flags for the pruned arms ({', '.join(PRUNED)}), "
                   "e.g. '--min-epochs 2'")
    p.add_argument("--common", default="", help="search.run flags for every arm, e.g. '--set base_filters=16'")
    p.add_argument("--summary-only", action="store_true", help="run nothing: print the figures of the arms "
                   "already in --workdir, as they stand")
    args = p.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    if args.summary_only and not args.workdir:
        p.error("--summary-only reads the studies of an earlier run: give its --workdir")
    if args.summary_only and not (args.workdir / "optuna.db").is_file():
        p.error(f"--summary-only reads {args.workdir / 'optuna.db'}, which is not there: give the --workdir of "
                f"an earlier run")

    import tempfile

    with benchlib.Machine("bench_search"), tempfile.TemporaryDirectory(prefix="fer-bench-search-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{workdir.resolve()}/optuna.db"
        print(f"budget     {args.space}: {args.trials} trials, at most {args.epochs} epochs, subset {args.subset:g}, "
              f"seed {args.seed}{'; every arm ' + args.common if args.common else ''}; arms {', '.join(arms)}; "
              f"studies in {storage}", flush=True)
        results = {}
        for arm in arms:
            if args.summary_only:
                if not count_finished(storage, f"bench-{arm}"):
                    p.error(f"{storage} holds no finished trial of study bench-{arm}: run that arm first, or "
                            f"leave {arm} out of --arms")
                results[arm] = summarize(storage, f"bench-{arm}", args.subset) | {"wall": None, "read_only": True}
                print_arm(arm, results[arm])
                continue
            flags = ARMS[arm] + args.common.split() + (args.extra.split() if arm in PRUNED else [])
            command = [sys.executable, "-m", "search.run", "--space", args.space, "--trials", str(args.trials),
                       "--epochs", str(args.epochs), "--subset", str(args.subset), "--seed", str(args.seed),
                       "--study-name", f"bench-{arm}", "--storage", storage, "--results", str(workdir), *flags]
            if args.data:
                command += ["--data", args.data]
            before = count_finished(storage, f"bench-{arm}")
            print(f"\n$ {' '.join(command[1:])}", flush=True)
            started = time.perf_counter()
            log = workdir / f"{arm}.log"
            with open(log, "a") as out:
                code = subprocess.call(command, cwd=benchlib.REPO, stdout=out, stderr=subprocess.STDOUT)
            wall = time.perf_counter() - started
            if code != 0:
                print(f"arm {arm} exited with {code}; see {log}")
                return 1
            results[arm] = summarize(storage, f"bench-{arm}", args.subset)
            results[arm]["wall"] = None if before >= args.trials else wall
            print_arm(arm, results[arm])

        for arm in [a for a in PRUNED if a in results]:
            compare(arm, results[arm], results.get("random"), args)
        (workdir / "bench_search.json").write_text(json.dumps(results, indent=1))
    return 0


def compare(arm: str, d: dict, r: dict | None, args) -> None:
    """Print target 1's comparison of a pruned arm against the random arm (or its least cost, unrun)."""
    name = "default search" if arm == "default" else "Hyperband (random configurations, the default pruner)"
    if r is not None:
        print(f"\n[1] {name}: best {d['best']:.4f} with {d['ee']:.2f} epoch-equivalents; random without "
              f"pruning: best {r['best']:.4f} with {r['ee']:.2f}. Accuracy gap {100 * (d['best'] - r['best']):+.1f} "
              f"points (target >= -1.0), {r['ee'] / d['ee']:.2f}x fewer epoch-equivalents (target >= 3x)")
        k = common_prefix(d, r)
        if k < max(len(d["trials"]), len(r["trials"])):
            # an arm stopped early (a timeout): the line above compares unequal runs; compare the two
            # over the trials both ran, numbers 0 to k-1
            print(f"    (unequal runs: the {arm} arm has {len(d['trials'])} trials, the random arm "
                  f"{len(r['trials'])}; the line below is the comparison)")
            dk, rk = (totals([t for t in x["trials"] if t["number"] < k], args.subset) for x in (d, r))
            print(f"[1] over the trials both arms finished (numbers 0-{k - 1}): {arm} best {dk['best']:.4f} with "
                  f"{dk['ee']:.2f} epoch-equivalents; random best {rk['best']:.4f} with {rk['ee']:.2f}. Accuracy gap "
                  f"{100 * (dk['best'] - rk['best']):+.1f} points, {rk['ee'] / dk['ee']:.2f}x fewer epoch-equivalents")
        return
    # Without pruning every trial that counts in the budget trains every epoch, so the random arm
    # costs at least trials x epochs without being run (a failed trial's epochs come on top: the
    # budget counts complete and pruned trials); its best accuracy is not known without it.
    full = args.trials * args.epochs * args.subset
    print(f"\n[1] {name}: best {d['best']:.4f} with {d['ee']:.2f} epoch-equivalents; random without "
          f"pruning spends at least {args.trials} trials x {args.epochs} epochs = {full:.2f} (more if one of "
          f"its trials fails part-way): at least {full / d['ee']:.2f}x fewer epoch-equivalents (target >= 3x); "
          f"its best accuracy needs the random arm run")


def count_finished(storage: str, name: str) -> int:
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return 0
    return sum(t.state.is_finished() for t in study.trials)


def summarize(storage: str, name: str, subset: float) -> dict:
    """Per-trial epochs, state and value, the arm's epoch-equivalents and best value."""
    import optuna

    from search import records

    study = optuna.load_study(study_name=name, storage=storage)
    # A failed trial that a later one retries (a killed worker's, an interrupted run's) is trained again
    # by its retry: its epochs are shown apart and left out of the arm's cost, or they would count twice.
    # Every other failed trial's epochs count (its loss went NaN, say: the search chose to train it).
    retried = {t.system_attrs.get("failed_trial") for t in study.trials} - {None}
    trials = []
    for t in study.trials:
        epochs = records.epochs_run(t)
        trials.append({"number": t.number, "state": t.state.name, "value": t.value,
                       "reached": max(t.intermediate_values.values(), default=None), "retried": t.number in retried,
                       "epochs": epochs, "default_point": bool(t.user_attrs.get("default_point")),
                       "params": t.params})
    return {"trials": trials, **totals(trials, subset),
            "retried_epochs": sum(t["epochs"] for t in trials if t["retried"])}


def totals(trials: list[dict], subset: float) -> dict:
    """Epochs and epoch-equivalents of `trials` (a retried failure's left out) and their best value."""
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    best = max(complete, key=lambda t: t["value"]) if complete else None
    epochs = sum(t["epochs"] for t in trials if not t["retried"])
    return {"epochs": epochs, "ee": epochs * subset, "best": best["value"] if best else float("nan"),
            "best_trial": best["number"] if best else None}


FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def common_prefix(*arms: dict) -> int:
    """The largest k such that every arm has finished each of its trials numbered below k."""
    k = min(len(s["trials"]) for s in arms)
    for s in arms:
        k = min([k, *(t["number"] for t in s["trials"] if t["state"] not in FINISHED)])
    return k


def print_arm(arm: str, s: dict) -> None:
    wall = "not run here" if s.get("read_only") else "reused" if s["wall"] is None else f"{s['wall'] / 60:.1f} min"
    failed = f"; {s['retried_epochs']} more epochs in failed trials run again, not counted" if s["retried_epochs"] else ""
    print(f"{arm}: {len(s['trials'])} trials, {s['epochs']} epochs = {s['ee']:.2f} epoch-equivalents, best "
          f"{s['best']:.4f} (trial {s['best_trial']}), wall {wall}{failed}")
    for t in s["trials"]:
        value = f"{t['value']:.4f}" if t["value"] is not None else "-"
        reached = f"{t['reached']:.4f}" if t["reached"] is not None else "-"
        print(f"  trial {t['number']:>2} {t['state']:<8} epochs {t['epochs']}  value {value}  its best epoch {reached}"
              f"{'  (default point)' if t['default_point'] else ''}{'  (run again as a later trial)' if t['retried'] else ''}")


if __name__ == "__main__":
    sys.exit(main())
