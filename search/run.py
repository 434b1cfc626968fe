"""`python -m search.run --space NAME`: search a space's hyperparameters on FER2013.

Every trial lands in the study storage as it finishes; running the same command again resumes the
study. At the end it writes results/<study>/trials.csv, best_config.yaml and leaderboard.html.
Every process running the command against one storage is a worker of the study; `--workers K`
starts K of them on this machine (search/workers.py).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from search import memory
from search.cli import UsageError, add_data_flags, check_writable, fail, parse_overrides, quiet_tensorflow

DRIVERS = ("optuna", "kerastuner")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # search.objective.PRECISIONS, without importing Keras
# The drivers' own, without importing Optuna or KerasTuner (--help answers in well under 2 s); a test keeps them equal
SAMPLERS = ("random", "tpe", "qmc")  # search.optuna_driver.SAMPLERS; the first is the default
PRUNERS = ("hyperband", "median", "halving", "none")  # search.optuna_driver.PRUNERS; the first is the default
TUNERS = ("hyperband", "bayesian", "random")  # search.kerastuner_driver.TUNERS; the first is the default
JIT = {"auto": None, "on": True, "off": False}
# Handed from a search to the fresh process it goes on in when its memory grows past --memory-limit.
RUN_STARTED_ENV = "FER_SEARCH_RUN_STARTED"
MEMORY_STEP_ENV = "FER_SEARCH_TRIAL_MEMORY_STEP"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.run",
        description="Search the hyperparameters of a space (spaces/NAME.yaml) on FER2013.",
        epilog="Run the same command again to resume a study; --fresh starts it over.",
    )
    p.add_argument("--space", help="a space name from spaces/ (see --list) or a path to a YAML file")
    p.add_argument("--list", action="store_true", help="list the spaces and exit")
    p.add_argument("--driver", choices=DRIVERS, default="optuna", help="search library (default: optuna)")
    p.add_argument("--trials", type=int, default=20, help="trials the study should hold in all, over every "
                   "worker and earlier runs (default: 20)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop starting trials after this long")
    p.add_argument("--study-name", help="study to create or resume (default: the space name)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL, e.g. postgresql://user@host/db "
                   "(default: $OPTUNA_STORAGE, else sqlite:///RESULTS/optuna.db)")
    p.add_argument("--sampler", choices=SAMPLERS, default=SAMPLERS[0], help="default: random, with "
                   "the default pruner Hyperband as its paper runs it; tpe models the trials so far: a better best "
                   "per trial, fewer trials stopped early (docs/performance.md, section 1)")
    p.add_argument("--tuner", choices=TUNERS, default=TUNERS[0],
                   help="KerasTuner algorithm with --driver kerastuner (default: hyperband)")
    p.add_argument("--pruner", choices=PRUNERS, default=PRUNERS[0],
                   help="prunes on validation accuracy after every epoch (default: hyperband)")
    p.add_argument("--epochs", type=int, help="most epochs a trial trains (default: the space's budget)")
    p.add_argument("--min-epochs", type=int, help="no pruning before this epoch (default: the space's)")
    p.add_argument("--subset", type=float, help="fraction of Training each trial trains on, in (0, 1]")
    p.add_argument("--fresh", action="store_true", help="delete the study first and start over")
    p.add_argument("--max-failures", type=int, default=3, help="stop after this many failed trials in a row")
    p.add_argument("--heartbeat", type=int, default=30, metavar="SECONDS", help="trial heartbeat; a trial "
                   "silent for 3 heartbeats (a dead worker) is marked failed and retried (default: 30)")
    p.add_argument("--memory-limit", type=float, default=100, metavar="MB", help="go on in a fresh process "
                   "(same command, same PID) before memory could grow this much over the trials (each trial's "
                   "memory is handed back, but not always all of it); 0: never (default: 100)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32", help="Keras dtype policy trials train "
                   "under: mixed_bfloat16 for CPUs with AVX512_BF16 or AMX, mixed_float16 for GPUs (default: float32)")
    p.add_argument("--jit", choices=("auto", "on", "off"), default="auto", help="XLA-compile the training step; "
                   "auto is Keras's choice: on for GPUs, off for CPUs (default: auto)")
    p.add_argument("--workers", type=int, default=1, metavar="K", help="run K worker processes on this machine "
                   "sharing the study, the cores split between them (default: 1). Workers on other machines "
                   "need only the same command with the same --storage")
    kt = p.add_argument_group("KerasTuner's distributed mode (with --driver kerastuner)")
    kt.add_argument("--chief", action="store_true", help="run the chief: it holds the oracle, serves --oracle and "
                    "trains nothing")
    kt.add_argument("--oracle", metavar="HOST:PORT", help="the chief's address; without --chief this process is a "
                    "worker of that chief")
    kt.add_argument("--tuner-id", metavar="ID", help="this worker's id (default: worker-HOST-PID); a dead worker "
                    "restarted with its id takes up its unfinished trial")
    p.add_argument("--worker-id", type=int, help=argparse.SUPPRESS)  # set by --workers for its children
    p.add_argument("--resumed", action="store_true", help=argparse.SUPPRESS)  # a memory recycle: keep the study
    add_data_flags(p)
    return p


def list_spaces_text() -> str:
    from search.space import list_spaces, load_space

    lines = []
    for name in list_spaces():
        try:
            space = load_space(name)
            about = space.description.split(". ")[0].split(":")[0].strip().rstrip(".")
            lines.append(f"{name:<20} {space.model:<18} {len(space.searchable())} searched  {about}")
        except Exception as exc:  # one broken file must not hide the others
            lines.append(f"{name:<20} (invalid: {exc})")
    return "\n".join(lines)


def configure_space(args: argparse.Namespace):
    """The space with the command line's --set, --labels and budget flags applied."""
    from search.space import load_space

    space = load_space(args.space)
    settings = {k: v for k, v in (("epochs", args.epochs), ("min_epochs", args.min_epochs),
                                  ("subset", args.subset)) if v is not None}
    if args.labels:
        settings["labels"] = args.labels
    if settings:
        space = space.with_settings(**settings)
    overrides = parse_overrides(args.overrides)
    return space.with_fixed(overrides) if overrides else space


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow()
    memory.set_up_allocation()  # before TensorFlow is imported (search/memory.py)
    if args.list:
        print(list_spaces_text())
        return 0
    if not args.space:
        return fail("give --space NAME (see --list) or a path to a space YAML file")
    if args.trials < 1:
        return fail("--trials must be at least 1")
    if args.workers < 1:
        return fail("--workers must be at least 1")
    if args.heartbeat < 0:
        return fail("--heartbeat must be 0 (off) or more seconds")
    if args.memory_limit < 0:
        return fail("--memory-limit must be 0 (never) or more MB")
    if args.resumed:  # the same search going on in a fresh process: --fresh was done when it started
        args.fresh = False
    if args.worker_id is not None:  # a child of --workers: the parent created (or --fresh deleted) the study
        args.workers, args.fresh = 1, False
        # Ctrl-C reaches a worker from its parent; a parent started in the background inherits SIGINT
        # ignored, and so would the worker, which must hear it anyway.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    from fer_models.resnet_transfer import WeightsUnavailableError
    from search.data import DataError
    from search.optuna_driver import SearchStopped, StudyMismatch
    from search.space import SpaceError
    from search.storage import StorageError

    try:
        from search import workers

        workers.kerastuner_roles(args)
        space = configure_space(args)
        check_writable(args.results)
        if args.workers > 1:
            return workers.launch(args, sys.argv[1:] if argv is None else list(argv), space)
        if args.driver == "kerastuner":
            if args.precision != "float32" or args.jit != "auto":
                raise UsageError("--precision and --jit apply to the optuna driver only; drop them with "
                                 "--driver kerastuner")
            from search.kerastuner_driver import main as kerastuner_main

            return kerastuner_main(args, space)
        # Only a real command line goes on in a fresh process when memory grows; main([...]) called
        # in-process (tests, notebooks) must never replace its caller.
        return _run_optuna(args, space, sys.argv[1:] if argv is None else None)
    except (SpaceError, UsageError, StorageError, StudyMismatch, DataError, SearchStopped,
            WeightsUnavailableError, FileNotFoundError) as exc:
        return fail(str(exc))


def _run_optuna(args: argparse.Namespace, space, reexec_argv: list[str] | None = None) -> int:
    from search import interrupts, records
    from search.data import load_fer2013
    from search.objective import Objective
    from search.optuna_driver import OptunaObjective, make_pruner, make_sampler, open_study, run_search
    from search.storage import open_storage, redact, resolve_url

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what its INFO lines say
    url = resolve_url(args.storage, args.results)
    storage = open_storage(url, heartbeat=args.heartbeat)
    # The data before the study: a malformed file must not leave a study behind with its default point queued.
    data = load_fer2013(args.data, labels=space.labels, seed=args.seed)
    study_name = args.study_name or space.name
    study = open_study(space, study_name=study_name, storage=storage, fresh=args.fresh,
                       sampler=make_sampler(args.sampler, args.seed), pruner=make_pruner(args.pruner, space))
    print(f"study {study_name!r} in {redact(url)}: {len(study.trials)} trials so far, {args.trials} wanted | "
          f"{space.model} on {len(data.train)} training images x{space.budget.subset:g}, "
          f"{data.num_classes} classes, up to {space.budget.epochs} epochs a trial", flush=True)
    objective = OptunaObjective(Objective(data, space, seed=args.seed, log=_log, precision=args.precision,
                                         jit=JIT[args.jit]), space)
    started, interrupted, summary = time.monotonic(), False, None
    # A search that went on in a fresh process (memory) reports its time from its first process's start.
    run_started = float(os.environ.get(RUN_STARTED_ENV, time.time())) if args.resumed else time.time()
    try:
        with interrupts.catching_ctrl_c(announce=args.worker_id is None):  # a worker's parent speaks for it
            summary = run_search(study, objective, n_trials=args.trials, timeout=args.timeout,
                                 max_failures=args.max_failures, poll=_poll(args.heartbeat), log=_log,
                                 memory_limit_mb=args.memory_limit if reexec_argv is not None and args.memory_limit
                                 else None,
                                 prior_memory_step_mb=float(os.environ.get(MEMORY_STEP_ENV, 0)) if args.resumed
                                 else 0.0)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: the running trial is marked failed; run the same command to resume", flush=True)
    finally:
        recycling = summary is not None and summary.recycle
        if args.worker_id is None and not recycling:  # a --workers child leaves the outputs to its parent
            paths = records.write_outputs(study, args.results, redact(url))
            _write_report(study, args.results, redact(url))
    if recycling:
        os.environ[RUN_STARTED_ENV], os.environ[MEMORY_STEP_ENV] = f"{run_started:.3f}", f"{summary.memory_step:.1f}"
        _continue_in_fresh_process(reexec_argv, None if args.timeout is None
                                   else args.timeout - (time.monotonic() - started))
    if args.worker_id is not None:
        if not interrupted:
            print(f"done: {summary.ran} trials run by this worker", flush=True)
        return 130 if interrupted else 0
    _print_summary(study, space, paths, time.time() - run_started)
    return 130 if interrupted else 0


def _continue_in_fresh_process(argv: list[str], timeout_left: float | None) -> None:
    """Replace this process by the same command, which resumes the study (same PID, same output)."""
    argv = [*argv, "--resumed"] + ([] if timeout_left is None else ["--timeout", f"{max(timeout_left, 0.001):.3f}"])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "search.run", *argv])


def _poll(heartbeat: int) -> float | None:
    """Seconds between checks while other workers' trials fill the budget (None: no heartbeat, no wait).
    Quicker than the heartbeat, so that a waiting worker leaves soon after the others finish."""
    return min(heartbeat, 2.0) if heartbeat else None


def _write_report(study, results_dir: Path, storage_label: str) -> None:
    from search.report import write_report

    path = write_report(study, results_dir, storage_label=storage_label)
    print(f"leaderboard: {path}")


def _print_summary(study, space, paths: dict[str, Path], seconds: float) -> None:
    from search import records

    states = records.trials_frame(study)["state"].value_counts().to_dict() if study.trials else {}
    print(f"\nstudy {study.study_name!r}: {len(study.trials)} trials "
          f"({', '.join(f'{n} {s.lower()}' for s, n in states.items())}) | this run {seconds / 60:.1f} min")
    try:
        best = records.best_trial(study)
    except ValueError:
        print("no trial completed yet")
    else:
        config = best.user_attrs.get("config", best.params)
        print(f"best: trial {best.number}, validation accuracy {best.value:.4f}")
        for note in records.edge_warnings(space, config):
            print(f"  note: {note}")
    for what, path in paths.items():
        print(f"{what}: {path}")


def _log(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
