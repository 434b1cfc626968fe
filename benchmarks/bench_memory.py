"""Resident memory across many trials (target 4): inside one Python process, and through the command line.

    python benchmarks/bench_memory.py --data PATH [--trials 20] [--epochs 1] [--subset 0.02] [--setup malloc]

Part 1 runs a random search (no pruning) of tiny trials in this process through `OptunaObjective`
over `Objective`, so every trial builds a different model, and reads VmRSS from /proc/self/status
after each, once the trial's memory is collected and handed back as search.run does: what stays of
every model. The process is set up first as `--setup` says (SETUPS below; by default as search.run
sets itself up). Part 2 runs the same search as `python -m search.run` (which goes on in a fresh
process, same PID, once memory grows past --memory-limit) and samples the child's VmRSS from
/proc/PID/status while it runs. Part 3 (`--parts 3`) times steady training epochs in fresh processes
set up each way `--speed-setups` names, alternating: what a set-up costs in speed; it counts the minor
page faults of each steady epoch too (a tensor whose pages the allocator gave back faults them in again). Prints figures;
asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib

SPEED_EPOCHS, SPEED_SUBSET = 4, 0.25  # part 3: each process trains the default point this long
SETUPS = {  # how a process is set up before TensorFlow is imported; part 2's search.run inherits the variable
    "search": "as search.run (set_up_allocation): one malloc arena, its blocks on its heap until trimmed; "
              "oneDNN's tensors through malloc",
    "pool": "malloc's arenas capped; oneDNN's tensors in TensorFlow's pool (search.run's until 2026-12-05)",
    "malloc": "malloc's arenas capped; oneDNN's tensors through malloc, which maps blocks over 32 MiB afresh",
    "none": "glibc's and TensorFlow's defaults",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchlib.add_data_flag(p)
    p.add_argument("--space", default="baseline_cnn")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--subset", type=float, default=0.02)
    p.add_argument("--parts", default="1,2", help="1: in this process, 2: through search.run, 3: training "
                   "speed under two set-ups (default: 1,2)")
    p.add_argument("--setup", choices=SETUPS, default="search", help="part 1: how this process is set up "
                   "(default: search, as search.run)")
    p.add_argument("--speed-setups", default="search,pool", help="part 3: the two set-ups compared, comma-separated "
                   "(default: search,pool)")
    p.add_argument("--speed-set", action="append", default=[], metavar="KEY=VALUE", help="part 3: train the default "
                   "point with this changed (repeatable), e.g. --speed-set batch_size=128")
    p.add_argument("--speed-rounds", type=int, default=2, help="part 3: process pairs, one set up each way "
                   "(default: 2)")
    p.add_argument("--speed-child", choices=SETUPS, help=argparse.SUPPRESS)  # one process of part 3
    args = p.parse_args(argv)
    parts = {s.strip() for s in args.parts.split(",")}
    if not parts <= {"1", "2", "3"}:
        p.error(f"--parts {args.parts}: give parts among 1, 2 and 3, comma-separated")
    if args.speed_rounds < 1:
        p.error("--speed-rounds must be at least 1")
    speed_setups = args.speed_setups.split(",")
    if len(speed_setups) != 2 or speed_setups[0] == speed_setups[1] or not set(speed_setups) <= set(SETUPS):
        p.error(f"--speed-setups {args.speed_setups}: give two of {', '.join(SETUPS)}, comma-separated")
    if args.speed_child:
        return speed_child(args)
    if parts & {"1", "2"}:  # part 2's search.run inherits the environment
        print(f"set-up     {args.setup}: {SETUPS[args.setup]}: {set_up(args.setup)}")
    if args.speed_set and "3" in parts:  # say so now, not in the first child's traceback
        from search.cli import UsageError, parse_overrides
        from search.space import SpaceError, load_space

        try:
            load_space(args.space).with_fixed(parse_overrides(args.speed_set))
        except (UsageError, SpaceError) as err:
            p.error(f"--speed-set: {err}")

    with benchlib.Machine("bench_memory"), tempfile.TemporaryDirectory(prefix="fer-bench-memory-") as tmp:
        if "1" in parts:
            in_process(args, Path(tmp))
        if "2" in parts:
            through_cli(args, Path(tmp))
        if "3" in parts:
            speed(args)
    return 0


def set_up(setup: str) -> str:
    """Set this process up as SETUPS[setup] says, before TensorFlow is imported; says what took."""
    from search.memory import ARENAS, ONEDNN_SYSTEM_ALLOCATOR, cap_malloc_arenas, set_up_allocation

    os.environ.pop(ONEDNN_SYSTEM_ALLOCATOR, None)  # whatever the environment said
    if setup == "search":
        return set_up_allocation()
    os.environ[ONEDNN_SYSTEM_ALLOCATOR] = "1" if setup == "malloc" else "0"
    capped = setup != "none" and cap_malloc_arenas()
    return f"arenas capped at {ARENAS}: {capped}, {ONEDNN_SYSTEM_ALLOCATOR}={os.environ[ONEDNN_SYSTEM_ALLOCATOR]}"


def speed(args) -> None:
    """Steady training epochs of the default point in fresh processes set up the two ways
    --speed-setups names, in alternating order: whether one costs training speed against the other."""
    first, second = args.speed_setups.split(",")
    epochs = {first: [], second: []}
    changed = f" with {', '.join(args.speed_set)}" if args.speed_set else ""
    print(f"\npart 3     the default point{changed}, {SPEED_EPOCHS} epochs on {SPEED_SUBSET:g} of Training in a fresh process "
          f"each, set up as {first} and as {second}, alternating", flush=True)
    for r in range(args.speed_rounds):
        for setup in ((first, second) if r % 2 == 0 else (second, first)):
            command = [sys.executable, __file__, "--speed-child", setup, "--space", args.space,
                       *(f"--speed-set={item}" for item in args.speed_set)]
            if args.data:
                command += ["--data", args.data]
            out = subprocess.run(command, cwd=benchlib.REPO, capture_output=True, text=True)
            if out.returncode:  # say why, not only that the child failed
                lines = out.stderr.strip().splitlines() or ["no output"]
                raise SystemExit(f"part 3: the {setup} process failed: {lines[-1]}")
            seconds, rss, faults = json.loads(out.stdout.strip().splitlines()[-1])
            epochs[setup] += seconds
            print(f"  round {r + 1} {setup:<7} steady training epochs {', '.join(f'{s:.2f}' for s in seconds)} s, "
                  f"{rss:.0f} MiB after; minor page faults a steady epoch (validation included) "
                  f"{', '.join(str(f) for f in faults)}", flush=True)
    a, b = benchlib.median(epochs[first]), benchlib.median(epochs[second])
    print(f"[4] set up as {first}: a steady training epoch {a:.2f} s against {b:.2f} s as {second} (medians): "
          f"{b / a:.3f}x the speed (fastest: {min(epochs[second]) / min(epochs[first]):.3f}x)")


def speed_child(args) -> int:
    set_up(args.speed_child)
    from search.cli import parse_overrides, quiet_tensorflow

    quiet_tensorflow()
    from search.data import load_fer2013
    from search.objective import Objective
    from search.space import load_space

    space = load_space(args.space).with_settings(epochs=SPEED_EPOCHS, min_epochs=1, subset=SPEED_SUBSET)
    if args.speed_set:
        space = space.with_fixed(parse_overrides(args.speed_set))
    objective = Objective(load_fer2013(args.data, labels=space.labels), space, log=None)
    import resource

    import keras

    class Faults(keras.callbacks.Callback):  # after the objective's own callbacks: validation included
        def __init__(self):
            super().__init__()
            self.counts: list[int] = []
            self.begun = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.begun = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

        def on_epoch_end(self, epoch, logs=None):
            self.counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.begun)

    timer, faults = benchlib.epoch_timer(per_batch=True), Faults()
    objective(space.defaults(), callbacks=[timer, faults])
    print(json.dumps([timer.train_seconds[1:], benchlib.rss_mb(), faults.counts[1:]]))
    return 0


def in_process(args, tmp: Path) -> None:
    import numpy as np
    import optuna

    from search.data import load_fer2013
    from search.memory import pool_idle_mb, return_freed_memory
    from search.objective import Objective
    from search.optuna_driver import OptunaObjective
    from search.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(args.space).with_settings(epochs=args.epochs, min_epochs=1, subset=args.subset)
    data = load_fer2013(args.data, labels=space.labels)
    objective = OptunaObjective(Objective(data, space, log=None), space)
    study = optuna.create_study(storage=f"sqlite:///{tmp}/in_process.db", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner())
    before = benchlib.rss_mb()
    print(f"\npart 1     {args.trials} random {space.model} trials of {args.epochs} epoch(s) on {args.subset:g} of "
          f"Training ({len(objective.objective.train_split(args.subset))} images) in this process; "
          f"{before:.0f} MiB with the data loaded", flush=True)
    rss, watched = [], []  # watched: what search.run's memory watch reads, TensorFlow's idle tensor pool left out
    for i in range(args.trials):
        study.optimize(objective, n_trials=1)
        return_freed_memory()  # as search.run does before it reads memory after a trial
        rss.append(benchlib.rss_mb())
        watched.append(rss[-1] - pool_idle_mb())
        t = study.trials[-1]
        print(f"  trial {i + 1:>2} {t.state.name:<8} base_filters {t.params.get('base_filters')!s:>3} dense_units "
              f"{t.params.get('dense_units')!s:>5}  rss {rss[-1]:7.1f} MiB, less the pool's idle {watched[-1]:7.1f}",
              flush=True)
    slope = np.polyfit(np.arange(2, len(rss) + 1), rss[1:], 1)[0] if len(rss) > 2 else float("nan")
    print(f"[4] in one Python process: {rss[0] - before:+.0f} MiB in the first trial (TensorFlow's one-time "
          f"set-up), then {rss[-1] - rss[0]:+.0f} MiB from trial 1 to trial {args.trials} ({slope:+.1f} MiB a trial, "
          f"fitted), set up as {args.setup}; less TensorFlow's idle tensor pool, as the memory watch reads it: "
          f"{watched[-1] - watched[0]:+.0f} MiB, highest {max(watched) - watched[0]:+.0f}")


def through_cli(args, tmp: Path) -> None:
    command = [sys.executable, "-m", "search.run", "--space", args.space, "--trials", str(args.trials),
               "--epochs", str(args.epochs), "--min-epochs", "1", "--subset", str(args.subset), "--sampler", "random",
               "--pruner", "none", "--storage", f"sqlite:///{tmp}/cli.db", "--results", str(tmp), "--fresh"]
    if args.data:
        command += ["--data", args.data]
    print(f"\npart 2     $ {' '.join(command[1:])}", flush=True)
    proc = subprocess.Popen(command, cwd=benchlib.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | {"PYTHONPATH": str(benchlib.REPO)})
    samples: list[float] = []
    sampler = threading.Thread(target=_sample, args=(proc, samples), daemon=True)
    sampler.start()
    after_trial, marks, restarts = [], [], 0
    for line in proc.stdout:
        if re.match(r"trial \d+ (complete|pruned|failed)", line):
            after_trial.append(samples[-1] if samples else float("nan"))
            marks.append(len(samples))
            print(f"  {line.rstrip()[:60]:<60} rss {after_trial[-1]:7.1f} MiB", flush=True)
        elif "fresh process" in line:
            restarts += 1
            print(f"  {line.rstrip()}", flush=True)
    proc.wait()
    sampler.join()
    # After its line, a trial's model is collected and its memory handed back, then the next trial
    # builds: the lowest reading until the next line is what stays once a trial is over.
    floors = [min(samples[a:b], default=float("nan")) for a, b in zip(marks, [*marks[1:], len(samples)])]
    first, peak = floors[0], max(samples)
    print(f"  lowest between trials: {', '.join(f'{f:.0f}' for f in floors)} MiB")
    print(f"[4] through search.run (--memory-limit 100, the default): between trials {first:.0f} MiB after trial 1, "
          f"{floors[-1]:.0f} after the last ({floors[-1] - first:+.0f} MiB), highest {max(floors):.0f} "
          f"({max(floors) - first:+.0f} MiB); peak while training {peak:.0f} MiB; {restarts} fresh process(es); "
          f"exit code {proc.returncode} (target <= 100 MB growth)")


def _sample(proc: subprocess.Popen, samples: list[float]) -> None:
    from search.memory import resident_mb

    while proc.poll() is None:
        rss = resident_mb(proc.pid)
        if rss is not None:
            samples.append(rss)
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
