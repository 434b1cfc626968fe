"""Many workers on one study: `--workers K` on one machine, and KerasTuner's chief and workers.

`python -m search.run ... --workers K` starts K copies of the same command as worker processes.
They share the study through its storage exactly as workers on other machines do (nothing passes
between them but the storage), so one machine and many machines behave the same. The parent
creates the study first (so the default point is queued once and a bad space or storage fails
before anything starts), splits the machine's cores between the workers' TensorFlow thread pools,
prefixes each worker's lines with its number, passes Ctrl-C on, and writes trials.csv,
best_config.yaml and the leaderboard once, when every worker has stopped.

With `--driver kerastuner`, `--chief` and `--oracle HOST:PORT` start KerasTuner's own distributed
mode through its environment variables (KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP,
KERASTUNER_ORACLE_PORT): one chief process holds the oracle, workers ask it for trials over gRPC.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from search.cli import UsageError

THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_env(workers: int, cores: int | None = None) -> dict[str, str]:
    """TensorFlow thread-pool sizes for one of `workers` processes sharing `cores`: cores // workers each.

    TensorFlow sizes both of its pools to every core by default; K workers would each start that many
    threads and fight over the cores. TensorFlow reads these variables when it initialises, so they
    are set in the worker's environment before it starts.
    """
    per = str(max(1, (cores or usable_cores()) // workers))
    return {name: per for name in THREAD_VARIABLES}


class Worker:
    """One worker process, its output relayed line by line with a `[wN]` prefix."""

    def __init__(self, number: int, argv: list[str], env: dict[str, str], cwd: Path | None = None):
        self.number = number
        # Its own session: the terminal's Ctrl-C reaches the parent only, which passes it on once.
        self.proc = subprocess.Popen([sys.executable, "-m", "search.run", *argv, "--worker-id", str(number)],
                                     env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, start_new_session=True)
        self.last_lines: list[str] = []
        self.relay = threading.Thread(target=self._relay, daemon=True)
        self.relay.start()

    def _relay(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.last_lines = (self.last_lines + [line])[-5:]
            print(f"[w{self.number}] {line}", flush=True)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def status(self) -> str:
        code = self.proc.returncode
        if code == 0:
            return "finished"
        if code in (130, -signal.SIGINT):  # -SIGINT: interrupted before its search began
            return "interrupted; its running trial is marked failed"
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}; its running trial is retried by a worker still alive"
        why = next((line for line in reversed(self.last_lines) if line.startswith("error:")), None)
        return f"stopped with exit status {code}" + (f" ({why})" if why else "")


def launch(args: argparse.Namespace, argv: list[str], space) -> int:
    """`--workers K`: run K local workers on the study and write the outputs when they are done."""
    from search import records
    from search.data import load_fer2013
    from search.optuna_driver import FINISHED_STATES, make_pruner, make_sampler, open_study
    from search.run import _print_summary, _write_report
    from search.storage import open_storage, redact, resolve_url

    if args.driver != "optuna":
        raise UsageError("--workers runs Optuna workers; KerasTuner distributes itself: start one process with "
                         "--chief --oracle HOST:PORT and each worker with --oracle HOST:PORT (see the README)")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = resolve_url(args.storage, args.results)
    storage = open_storage(url, heartbeat=args.heartbeat)
    load_fer2013(args.data, labels=space.labels, seed=args.seed)  # checks the data and fills the cache once
    study_name = args.study_name or space.name
    # Created here, before any worker starts (and after the data is known to load): the default point
    # is queued once, --fresh deletes the study once, and a study of another space is refused once.
    study = open_study(space, study_name=study_name, storage=storage, fresh=args.fresh,
                       sampler=make_sampler(args.sampler, args.seed), pruner=make_pruner(args.pruner, space))
    cores = usable_cores()
    env = os.environ | thread_env(args.workers, cores) | {"PYTHONUNBUFFERED": "1"}
    threads = env["TF_NUM_INTRAOP_THREADS"]
    print(f"study {study_name!r} in {redact(url)}: {len(study.trials)} trials so far, {args.trials} wanted | "
          f"{args.workers} workers on {cores} cores, {threads} TensorFlow thread(s) each", flush=True)
    if args.workers > cores:
        print(f"note: more workers than cores ({args.workers} > {cores}): they share cores and each runs slower",
              flush=True)

    started = time.monotonic()
    workers, interrupted = _run_all(lambda number: Worker(number, argv, env), args.workers)
    for w in workers:
        w.relay.join(timeout=5)
    paths = records.write_outputs(study, args.results, redact(url))
    _write_report(study, args.results, redact(url))
    for w in workers:
        print(f"worker {w.number}: {w.status()}")
    _print_summary(study, space, paths, time.monotonic() - started)
    if interrupted:
        return 130
    failed = next((w.proc.returncode for w in workers if w.proc.returncode > 0), 0)
    if failed:
        return failed
    done = len(study.get_trials(deepcopy=False, states=FINISHED_STATES))
    if any(w.proc.returncode < 0 for w in workers) and done < args.trials:  # killed, and nobody took over
        print(f"the study holds {done} of {args.trials} finished trials: run the same command to go on")
        return 1
    return 0


def _run_all(start: Callable[[int], Worker], count: int) -> tuple[list[Worker], bool]:
    """Start `count` workers and wait for them all. The first Ctrl-C (or SIGTERM) asks them to stop
    (each marks its running trial failed, as a single process does); a second one kills them.
    Returns the workers and whether they were interrupted."""
    workers: list[Worker] = []
    stops = 0

    def forward(signum, frame) -> None:
        nonlocal stops
        stops += 1
        if stops == 1:
            print("\ninterrupted: stopping the workers (each marks its running trial failed); Ctrl-C again kills "
                  "them", flush=True)
        for w in workers:
            w.signal(signal.SIGINT if stops == 1 else signal.SIGKILL)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for number in range(1, count + 1):
            if stops:
                break
            workers.append(start(number))
        while any(w.proc.poll() is None for w in workers):
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return workers, stops > 0


# -- KerasTuner's distributed mode ----------------------------------------------------------------


def kerastuner_roles(args: argparse.Namespace) -> str | None:
    """Set KerasTuner's variables for `--chief` / `--oracle`; return this process's tuner id (None:
    not distributed). Variables already in the environment are KerasTuner's own way and are kept."""
    if args.tuner_id and not args.oracle:
        raise UsageError("--tuner-id names a KerasTuner worker: give it with --oracle HOST:PORT (the chief's address)")
    if not (args.chief or args.oracle):
        return os.environ.get("KERASTUNER_TUNER_ID") if "KERASTUNER_ORACLE_IP" in os.environ else None
    if args.driver != "kerastuner":
        raise UsageError("--chief and --oracle start KerasTuner's distributed mode: add --driver kerastuner "
                         "(Optuna workers need only the same --storage)")
    if not args.oracle:
        raise UsageError("--chief needs --oracle HOST:PORT, the address the chief listens on (e.g. 0.0.0.0:8000)")
    host, sep, port = args.oracle.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--oracle {args.oracle!r}: write it as HOST:PORT, e.g. --oracle 10.0.0.5:8000")
    if args.chief:
        tuner_id = "chief"
        if args.tuner_id and args.tuner_id != "chief":
            raise UsageError("--tuner-id names a worker; the chief's id is always 'chief'")
    else:
        tuner_id = args.tuner_id or f"worker-{socket.gethostname()}-{os.getpid()}"
        if "chief" in tuner_id:
            raise UsageError(f"--tuner-id {tuner_id!r}: KerasTuner takes any id containing 'chief' for the chief")
        if args.fresh:
            raise UsageError("--fresh on a KerasTuner worker would delete the shared study; pass it to the chief")
    os.environ.update(KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP=host, KERASTUNER_ORACLE_PORT=port)
    _quiet_condition_protos()
    return tuner_id


def _quiet_condition_protos() -> None:
    """KerasTuner 1.4.8 prints a value (`adam`, `sgd`, ...) each time a conditional hyperparameter is
    sent over gRPC (a leftover print in `conditions.Parent.to_proto`), flooding chief and workers."""
    try:
        from keras_tuner.src.engine import conditions
    except ImportError:  # another KerasTuner layout: leave it alone
        return
    original = conditions.Parent.to_proto
    if getattr(original, "_fer_quiet", False):
        return

    def to_proto(self):
        with contextlib.redirect_stdout(io.StringIO()):
            return original(self)

    to_proto._fer_quiet = True
    conditions.Parent.to_proto = to_proto
