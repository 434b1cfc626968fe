"""Many workers on one study: the exact global budget, heartbeats and retries, `--workers`, resuming
from another process, redacted passwords; against the real PostgreSQL server where marked."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search import records, run
from search.optuna_driver import _within_budget, make_sampler, run_search
from search.storage import open_storage, redact
from search.workers import thread_env

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("FER_SEARCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
# --memory-limit 0: no fresh process between a worker's trials (tested in test_recycle.py); each costs a
# TensorFlow import, about a minute of this file on a slow machine.
QUICK = ["--min-epochs", "1", "--set", "batch_size=32", "--sampler", "random", "--pruner", "none",
         "--memory-limit", "0"]
SECRET = "pw-Zq8xK3vT"


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def pg_url() -> str:
    """A fresh database on the test server for this test alone, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    admin = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {redact(admin)} ({str(exc).splitlines()[0]}); start it or set "
                    f"FER_SEARCH_TEST_POSTGRES (.ci/run does both)")
    name = f"fer_test_{uuid.uuid4().hex[:10]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def with_password(url: str) -> str:
    """The URL with a password (the test server trusts local connections and never asks for it)."""
    scheme, rest = url.split("://", 1)
    user, at, host = rest.partition("@")
    return f"{scheme}://{user}:{SECRET}@{host}" if at else f"{scheme}://postgres:{SECRET}@{rest}"


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


# -- the budget under contention, without TensorFlow ------------------------------------------------

STRESS_WORKER = r"""
import random, sys, time
import optuna
from search.optuna_driver import make_sampler, run_search
from search.storage import open_storage

url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=1), sampler=make_sampler("random", 0))

def objective(trial):
    x = trial.suggest_float("x", 0, 1)
    for step in range(3):  # a write per step: the storage is busy the whole time
        time.sleep(random.uniform(0.0, 0.02))
        trial.report(x, step)
    return x

print("ran", run_search(study, objective, n_trials=n, poll=1, log=lambda line: None).ran)
"""


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_four_racing_workers_run_exactly_the_budget(backend, tmp_path, request):
    url = f"sqlite:///{tmp_path}/o.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    optuna.create_study(study_name="race", storage=open_storage(url, heartbeat=1), direction="maximize")
    n = 40
    procs = [subprocess.Popen([sys.executable, "-c", STRESS_WORKER, url, "race", str(n)], env=_env(), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in outs]
    study = optuna.load_study(study_name="race", storage=url)
    done = finished(study)
    assert len(done) == n  # not 4 x 40, and not one more
    assert sum(int(out.split()[-1]) for out, _ in outs) == n
    others = [t for t in study.trials if t.state != TrialState.COMPLETE]
    assert all(t.state == TrialState.FAIL and t.user_attrs.get("surplus") and not t.params for t in others)
    assert len({t.params["x"] for t in done}) == n  # four workers with one --seed, and no point sampled twice


def test_a_surplus_trial_is_not_run_and_a_queued_point_stays_queued(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    study.ask(), study.ask()  # two trials running on "other workers" fill a budget of 2
    study.enqueue_trial({"x": 0.5}, user_attrs={"default_point": True})
    calls = []
    guarded = _within_budget(lambda trial: calls.append(trial.number) or 1.0, n_trials=2)
    study.optimize(guarded, n_trials=1, catch=(Exception,))
    surplus = study.trials[2]
    assert calls == [] and surplus.state == TrialState.FAIL and surplus.user_attrs["surplus"] is True
    assert "the 2 trials numbered below it already fill the budget of 2" in surplus.user_attrs["fail_reason"]
    requeued = study.trials[3]
    assert requeued.state == TrialState.WAITING and requeued.system_attrs["fixed_params"] == {"x": 0.5}
    assert requeued.user_attrs == {"default_point": True}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # the "other worker" asks by hand
def test_a_worker_waits_for_the_trials_of_others_and_leaves_when_they_finish(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=1)
    study = optuna.create_study(storage=storage, direction="maximize")
    other = study.ask()  # running elsewhere, with no heartbeat of its own: never stale
    lines: list[str] = []

    import threading

    threading.Timer(1.5, lambda: study.tell(other, 0.3)).start()
    started = time.monotonic()
    summary = run_search(study, lambda trial: 1.0, n_trials=1, poll=0.2, log=lines.append)
    assert summary.ran == 0 and 1.4 < time.monotonic() - started < 10
    assert lines and "waiting for them" in lines[0]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]


def test_a_trial_finishing_while_a_worker_counts_the_budget_starts_no_surplus_trial(tmp_path):
    # The other worker's trial finishes right after this worker read the study: its counts must come
    # from that one read (two reads, finished then running, missed it in both and started a surplus trial).
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=1)
    study = optuna.create_study(storage=storage, direction="maximize")
    other = study.ask()
    read = study.get_trials

    def finished_just_after_the_read(*args, **kwargs):
        trials = read(*args, **kwargs)
        if TrialState.COMPLETE in (kwargs.get("states") or ()):  # study.trials below reads with no states
            if study.trials[other.number].state == TrialState.RUNNING:
                study.tell(other, 0.3)
        return trials

    study.get_trials = finished_just_after_the_read
    summary = run_search(study, lambda trial: 1.0, n_trials=1, poll=0.05, log=lambda line: None)
    assert summary.ran == 0
    assert [t.state for t in read()] == [TrialState.COMPLETE]


def test_samplers_seeded_per_trial_never_replay_points_across_processes(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(study_name="s", storage=url, direction="maximize")
    for _ in range(3):  # three "processes" with the same --seed, one after another: a resumed study
        study = optuna.load_study(study_name="s", storage=url, sampler=make_sampler("random", 0))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    xs = [t.params["x"] for t in study.trials]
    assert len(set(xs)) == 6
    again = optuna.create_study(sampler=make_sampler("random", 0))
    again.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=6)
    assert [t.params["x"] for t in again.trials] == xs  # and the same --seed still gives the same search


def test_thread_pools_are_split_between_workers():
    assert thread_env(2, cores=2) == {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
                                      "OMP_NUM_THREADS": "1"}
    assert thread_env(3, cores=8)["TF_NUM_INTRAOP_THREADS"] == "2"
    assert thread_env(4, cores=2)["TF_NUM_INTRAOP_THREADS"] == "1"  # never 0


def test_a_password_in_a_storage_url_is_never_printed(tmp_path, capsys):
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:1/nothing_listens_here"
    assert redact(url) == "postgresql://postgres:***@127.0.0.1:1/nothing_listens_here"
    assert run.main(["--space", "baseline_cnn", "--results", str(tmp_path), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "cannot open the study storage postgresql+psycopg://postgres:***@127.0.0.1:1/" in err
    assert SECRET not in err


# -- real workers on the PostgreSQL server, training on a small real FER2013 slice --------------------


def worker_processes(marker: str) -> dict[int, tuple[str, dict[str, str]]]:
    """The `--workers` children whose command line holds `marker`: pid -> (command line, environment)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            if b"--worker-id" not in argv or not any(marker.encode() in a for a in argv):
                continue
            environ = (d / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        found[int(d.name)] = (" ".join(a.decode() for a in argv), env)
    return found


def wait_for_line(log: Path, pattern: str, proc: subprocess.Popen, seconds: float = 240) -> re.Match:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(), re.M)
        if found:
            return found
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"never saw {pattern!r}; the output was:\n{log.read_text()[-3000:]}")


def wait_for_stored_epoch(url: str, study_name: str, number: int, proc: subprocess.Popen,
                          seconds: float = 60) -> None:
    """Wait until trial `number` of the study has its first epoch's curve in the storage."""
    study = optuna.load_study(study_name=study_name, storage=url)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        if study.trials[number].user_attrs.get("history"):
            return
        time.sleep(0.02)
    ended = "" if proc.poll() is None else f" (the search exited with {proc.returncode})"
    pytest.fail(f"trial {number} of {study_name!r} never stored its first epoch{ended}")


@pytest.mark.postgres
def test_two_local_workers_share_one_study_and_the_parent_writes_the_outputs(small_cnn, pg_url, fer_slice, tmp_path):
    url = with_password(pg_url)  # in the environment, as the README advises: not on any command line
    log = tmp_path / "out.txt"
    cmd = [sys.executable, "-m", "search.run", "--space", small_cnn, "--data", str(fer_slice),
           "--results", str(tmp_path), "--workers", "2", "--trials", "6", "--epochs", "1", *QUICK]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=_env() | {"OPTUNA_STORAGE": url}, cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT)
        seen: dict[int, tuple[str, dict[str, str]]] = {}
        while proc.poll() is None and len(seen) < 2:
            seen.update(worker_processes(str(tmp_path)))
            time.sleep(0.2)
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()

    study = optuna.load_study(study_name="small_cnn", storage=pg_url)
    done = finished(study)
    assert len(done) == 6  # the budget is the study's, not each worker's
    assert sum(bool(t.user_attrs.get("default_point")) for t in study.trials) == 1
    configs = {repr(sorted(t.user_attrs["config"].items())) for t in done}
    assert len(configs) == 6  # no configuration trained twice
    ran_by = {w: {int(n) for n in re.findall(rf"^\[w{w}\] trial (\d+) complete", text, re.M)} for w in (1, 2)}
    assert ran_by[1] and ran_by[2] and not ran_by[1] & ran_by[2]
    assert ran_by[1] | ran_by[2] == {t.number for t in done}

    # the workers split the cores between their TensorFlow thread pools
    assert len(seen) == 2
    per = str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert all(env["TF_NUM_INTRAOP_THREADS"] == per == env["TF_NUM_INTEROP_THREADS"] for _, env in seen.values())

    # the outputs are written once, by the parent, when both workers are done
    out_dir = tmp_path / "small_cnn"
    assert text.count("leaderboard: ") == 1 and "worker 1: finished" in text and "worker 2: finished" in text
    # one row a trial; a surplus trial (two workers asked for the last place at once) is left out of the table
    tabled = [t for t in study.trials if not t.user_attrs.get("surplus")]
    assert len((out_dir / "trials.csv").read_text().splitlines()) == 1 + len(tabled)
    files = [out_dir / "trials.csv", out_dir / "best_config.yaml", out_dir / "leaderboard.html"]
    assert ":***@" in text and ":***@" in (out_dir / "best_config.yaml").read_text()
    for where in [text, *(f.read_text() for f in files), *(cmdline for cmdline, _ in seen.values())]:
        assert SECRET not in where


@pytest.mark.postgres
def test_a_killed_worker_has_its_trial_failed_and_retried_by_the_survivor(small_cnn, pg_url, fer_slice, tmp_path):
    log = tmp_path / "out.txt"
    cmd = [sys.executable, "-m", "search.run", "--space", small_cnn, "--data", str(fer_slice),
           "--results", str(tmp_path), "--workers", "2", "--trials", "3", "--epochs", "2", "--heartbeat", "1",
           *QUICK]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=_env() | {"OPTUNA_STORAGE": pg_url}, cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            killed = int(wait_for_line(log, r"^\[w1\] trial (\d+) \| epoch   1/2", proc).group(1))
            (pid,) = [pid for pid, (cmdline, _) in worker_processes(str(tmp_path)).items()
                      if "--worker-id 1" in cmdline]
            # the epoch's line is printed just before its curve is stored: wait for the storage
            wait_for_stored_epoch(pg_url, "small_cnn", killed, proc)
            os.kill(pid, signal.SIGKILL)  # mid-trial: its first epoch is stored, the second is running
            assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()

    study = optuna.load_study(study_name="small_cnn", storage=pg_url)
    dead = study.trials[killed]
    assert dead.state == TrialState.FAIL and len(dead.user_attrs["history"]) == 1  # failed, not left RUNNING
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["config"] == dead.user_attrs["config"]
    assert re.search(rf"^\[w2\] trial {retry.number} complete", text, re.M)  # run again by the survivor
    assert records.trial_row(study.study_name, retry)["retry_of"] == killed
    assert len(finished(study)) == 3  # and every finished trial kept
    assert "worker 1: killed by SIGKILL" in text and "worker 2: finished" in text


@pytest.mark.postgres
def test_a_study_started_by_one_worker_is_resumed_by_another_process(small_cnn, pg_url, fer_slice, tmp_path, monkeypatch,
                                                                     capsys):
    common = ["--space", small_cnn, "--data", str(fer_slice), "--epochs", "1", *QUICK]
    assert run.main([*common, "--storage", pg_url, "--results", str(tmp_path / "a"), "--trials", "2"]) == 0
    first = [(t.number, t.value, t.datetime_complete) for t in
             optuna.load_study(study_name="small_cnn", storage=pg_url).trials]
    capsys.readouterr()

    monkeypatch.setenv("OPTUNA_STORAGE", with_password(pg_url))  # "another machine": its own results folder
    assert run.main([*common, "--results", str(tmp_path / "b"), "--trials", "3"]) == 0
    out = capsys.readouterr().out
    assert "2 trials so far, 3 wanted" in out and SECRET not in out

    study = optuna.load_study(study_name="small_cnn", storage=pg_url)
    assert [(t.number, t.value, t.datetime_complete) for t in study.trials[:2]] == first
    assert len(finished(study)) == 3 and sum(bool(t.user_attrs.get("default_point")) for t in study.trials) == 1
    table = (tmp_path / "b" / "small_cnn" / "trials.csv").read_text()
    assert len(table.splitlines()) == 1 + 3 and SECRET not in table


# -- KerasTuner's own distributed mode ------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_kerastuner_chief_and_worker_share_one_search(small_cnn, fer_slice, tmp_path):
    oracle = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "search.run", "--space", small_cnn, "--driver", "kerastuner", "--tuner",
           "random", "--data", str(fer_slice), "--results", str(tmp_path), "--storage", f"sqlite:///{tmp_path}/o.db",
           "--trials", "2", "--epochs", "1", "--min-epochs", "1", "--set", "batch_size=32", "--oracle", oracle]
    logs = {role: tmp_path / f"{role}.txt" for role in ("chief", "worker")}
    procs = {}
    for role, extra in (("chief", ["--chief"]), ("worker", ["--tuner-id", "w1"])):
        with logs[role].open("w") as out:
            procs[role] = subprocess.Popen([*cmd, *extra], env=_env(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        for role, proc in procs.items():
            assert proc.wait(timeout=300) == 0, logs[role].read_text()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    study = optuna.load_study(study_name="small_cnn-kerastuner", storage=f"sqlite:///{tmp_path}/o.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all(t.user_attrs["driver"] == "kerastuner" for t in study.trials)
    assert sum(t.user_attrs["default_point"] for t in study.trials) == 1
    worker_log, chief_log = logs["worker"].read_text(), logs["chief"].read_text()
    assert "worker 'w1' of the chief" in worker_log and "trial 1 complete" in worker_log
    assert "chief serving" in chief_log and "trial 0 |" not in chief_log  # the chief trains nothing
    assert (tmp_path / "small_cnn-kerastuner" / "workers" / "w1" / "kerastuner").is_dir()
    assert not re.search(r"^(adam|sgd)$", worker_log + chief_log, re.M)  # KerasTuner's stray print, silenced


def test_kerastuner_roles_are_checked_before_anything_starts(tmp_path, capsys):
    base = ["--space", "baseline_cnn", "--results", str(tmp_path), "--storage", f"sqlite:///{tmp_path}/o.db"]
    assert run.main([*base, "--chief", "--oracle", "127.0.0.1:1"]) == 2
    assert "add --driver kerastuner" in capsys.readouterr().err
    assert run.main([*base, "--driver", "kerastuner", "--chief"]) == 2
    assert "--chief needs --oracle HOST:PORT" in capsys.readouterr().err
    assert run.main([*base, "--driver", "kerastuner", "--oracle", "nohost"]) == 2
    assert "write it as HOST:PORT" in capsys.readouterr().err
    assert run.main([*base, "--tuner-id", "w1"]) == 2
    assert "give it with --oracle HOST:PORT" in capsys.readouterr().err
    assert run.main([*base, "--driver", "kerastuner", "--workers", "2"]) == 2
    assert "KerasTuner distributes itself" in capsys.readouterr().err
    assert "KERASTUNER_ORACLE_IP" not in os.environ


def test_ctrl_c_reaches_every_local_worker_and_the_outputs_are_still_written(small_cnn, fer_slice, tmp_path):
    log = tmp_path / "out.txt"
    cmd = [sys.executable, "-m", "search.run", "--space", small_cnn, "--data", str(fer_slice),
           "--results", str(tmp_path), "--storage", f"sqlite:///{tmp_path}/o.db", "--workers", "2",
           "--trials", "6", "--epochs", "4", *QUICK]
    with log.open("w") as out:
        # started the way a shell starts a background job: SIGINT ignored, which the workers inherit
        proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        try:
            for w in (1, 2):  # both mid-trial
                wait_for_line(log, rf"^\[w{w}\] trial \d+ \| epoch   1/4", proc)
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pytest.fail("still running 120 s after Ctrl-C; its output ends:\n" + log.read_text()[-6000:])
            assert code == 130
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert text.count("interrupted: the running trial is marked failed") == 2  # one per worker
    assert "worker 1: interrupted" in text and "worker 2: interrupted" in text
    study = optuna.load_study(study_name="small_cnn", storage=f"sqlite:///{tmp_path}/o.db")
    assert TrialState.RUNNING not in {t.state for t in study.trials}
    assert (tmp_path / "small_cnn" / "trials.csv").exists()
