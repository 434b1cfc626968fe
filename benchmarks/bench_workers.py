"""Workers on one PostgreSQL study: trials per hour with 1 and K local workers, and how long a dead
worker's trial waits before another worker runs it again.

    python benchmarks/bench_workers.py --data PATH [--server postgresql://postgres@127.0.0.1:5432/test]
        [--workers 1,2] [--trials 6] [--epochs 2] [--subset 0.1] [--heartbeats 2,30]

Throughput: the same real budget (`--trials` trials of the space, `--epochs` epochs each on
`--subset` of Training, random sampling, no pruning) run by `python -m search.run` with one process,
then with `--workers K`. Trials per hour count from the first trial's start to the last trial's
end, read from the storage; the wall time adds start-up and the parent's outputs.

Retry: one worker runs the study's only trial, a second waits for it; the first is SIGKILLed after
its first epoch. Measured from the kill: when the dead trial is marked failed, and when its retry
starts (on the waiting worker). The survivor is idle here, the best case; a survivor busy with its own
trial retries it only when that trial ends.

Each part runs on a database of its own, created on `--server` and dropped at the end. Prints
figures; asserts nothing. The machine's load is printed with each run: other jobs skew the figures.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import benchlib

DEFAULT_SERVER = os.environ.get("FER_SEARCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchlib.add_data_flag(p)
    p.add_argument("--server", default=DEFAULT_SERVER, help="a PostgreSQL database URL whose user may create "
                   "databases (default: $FER_SEARCH_TEST_POSTGRES, else the local test server)")
    p.add_argument("--space", default="baseline_cnn")
    p.add_argument("--workers", default="1,2", help="worker counts to compare (default: 1,2)")
    p.add_argument("--trials", type=int, default=6, help="trials per throughput run (default: 6)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trial (default: 2)")
    p.add_argument("--subset", type=float, default=0.1, help="fraction of Training per trial (default: 0.1)")
    p.add_argument("--heartbeats", default="2,30", help="heartbeats (s) to time a retry under (default: 2,30)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-retry", action="store_true")
    args = p.parse_args(argv)
    if not args.data:
        p.error("give --data PATH or set FER2013_PATH")

    with benchlib.Machine("bench_workers", modules=("tensorflow", "optuna", "sqlalchemy", "psycopg")), \
            tempfile.TemporaryDirectory(prefix="bench_workers_") as tmp:
        common = ["--space", args.space, "--data", args.data, "--subset", str(args.subset), "--sampler", "random",
                  "--pruner", "none"]
        # fill the data cache first, so the first timed run does not pay for parsing the CSV
        subprocess.run([sys.executable, "-c", "import sys; from search.data import load_fer2013; "
                        "load_fer2013(sys.argv[1])", args.data], env=_env(), cwd=benchlib.REPO, check=True)
        if not args.skip_throughput:
            print(f"\nthroughput: {args.space}, {args.trials} trials x {args.epochs} epochs on {args.subset:g} of "
                  f"Training, random sampling, no pruning, against PostgreSQL")
            for k in (int(x) for x in args.workers.split(",")):
                with database(args.server) as url:
                    throughput(url, k, common + ["--trials", str(args.trials), "--epochs", str(args.epochs),
                                                 "--min-epochs", str(args.epochs)], Path(tmp) / f"w{k}")
        if not args.skip_retry:
            print("\nretry of a SIGKILLed worker's trial (the survivor waiting, idle)")
            for beat in (int(x) for x in args.heartbeats.split(",")):
                with database(args.server) as url:
                    retry(url, beat, common + ["--trials", "1", "--epochs", "50", "--min-epochs", "50"],
                          Path(tmp) / f"hb{beat}")
    return 0


def throughput(url: str, workers: int, flags: list[str], results: Path) -> None:
    import optuna

    from search.storage import open_storage

    cmd = [sys.executable, "-m", "search.run", *flags, "--results", str(results)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    load = benchlib.load_average()
    started = time.perf_counter()
    out = subprocess.run(cmd, env=_env(url), cwd=benchlib.REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        print(f"  {workers} worker(s): failed with status {out.returncode}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        return
    study = optuna.load_study(study_name=flags[flags.index("--space") + 1], storage=open_storage(url, heartbeat=None))
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    per_trial = sorted(t.duration.total_seconds() for t in done)
    print(f"  {workers} worker(s): {len(done)} trials in {span:.0f} s from first start to last end = "
          f"{len(done) / span * 3600:.0f} trials/hour | median trial {benchlib.median(per_trial):.1f} s | wall "
          f"{wall:.0f} s with start-up and outputs | {len(study.trials) - len(done)} other trial(s) | load avg "
          f"{load} before, {benchlib.load_average()} after", flush=True)


def retry(url: str, heartbeat: int, flags: list[str], results: Path) -> None:
    import optuna

    from search.storage import open_storage

    cmd = [sys.executable, "-m", "search.run", *flags, "--heartbeat", str(heartbeat)]
    results.mkdir(parents=True)
    logs = {name: results / f"{name}.txt" for name in ("first", "survivor")}
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["first"] = _start(cmd + ["--results", str(results / "a")], logs["first"], url)
        _wait_for(logs["first"], r"^trial 0 \| epoch   1/", procs["first"])
        procs["survivor"] = _start(cmd + ["--results", str(results / "b")], logs["survivor"], url)
        _wait_for(logs["survivor"], r"waiting for them", procs["survivor"])
        load = benchlib.load_average()
        procs["first"].send_signal(signal.SIGKILL)
        killed = datetime.now()  # the storage's datetimes are the workers' local times, as this one
        failed_after = retry_after = None
        study_name, storage = flags[flags.index("--space") + 1], open_storage(url, heartbeat=None)
        while retry_after is None and (datetime.now() - killed).total_seconds() < 10 * heartbeat + 60:
            trials = optuna.load_study(study_name=study_name, storage=storage).trials
            if failed_after is None and trials[0].state.name == "FAIL":
                failed_after = trials[0].datetime_complete
            again = [t for t in trials if t.system_attrs.get("failed_trial") == 0 and t.state.name == "RUNNING"]
            if again:
                retry_after = again[0].datetime_start
            time.sleep(0.1)
        if retry_after is None:
            print(f"  heartbeat {heartbeat} s: no retry within {10 * heartbeat + 60} s")
            return
        print(f"  heartbeat {heartbeat:>2} s (grace {3 * heartbeat} s): death -> marked failed "
              f"{(failed_after - killed).total_seconds():.1f} s, death -> retry started "
              f"{(retry_after - killed).total_seconds():.1f} s | load avg {load}", flush=True)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


class database:
    """A fresh database on the server for one run, dropped afterwards."""

    def __init__(self, server: str):
        self.server = server.replace("postgresql+psycopg://", "postgresql://")
        self.name = f"fer_bench_{uuid.uuid4().hex[:10]}"

    def __enter__(self) -> str:
        import psycopg

        self.conn = psycopg.connect(self.server, autocommit=True)
        self.conn.execute(f'CREATE DATABASE "{self.name}"')
        return f"{self.server.rpartition('/')[0]}/{self.name}"

    def __exit__(self, *exc) -> None:
        self.conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.conn.close()


def _env(url: str | None = None) -> dict[str, str]:
    env = os.environ | {"PYTHONPATH": str(benchlib.REPO), "PYTHONUNBUFFERED": "1"}
    return env | {"OPTUNA_STORAGE": url} if url else env


def _start(cmd: list[str], log: Path, url: str) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(cmd, env=_env(url), cwd=benchlib.REPO, stdout=out, stderr=subprocess.STDOUT)


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text(), re.M):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(proc.args[:6])}... stopped before {pattern!r}:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"never saw {pattern!r} in {log}")


if __name__ == "__main__":
    sys.exit(main())
