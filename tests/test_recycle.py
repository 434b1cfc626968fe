"""--memory-limit: a search whose memory grows goes on in a fresh process and finishes the same study."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parent.parent


def test_search_over_its_memory_limit_continues_in_a_fresh_process(small_cnn, fer_slice, tmp_path):
    """Trials hand their memory back, so real growth between two small trials may be none at all: the
    search's processes read a resident memory that grows 10 MB a trial and an empty TensorFlow pool (a
    sitecustomize replaces the readings); the exec into a fresh process and the resumed study are real."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import itertools\nimport search.memory\n_mb = itertools.count(1000, 10)\n"
        "search.memory.resident_mb = lambda pid='self': float(next(_mb))\n"
        "search.memory.pool_idle_mb = lambda: 0.0\n")
    db = f"sqlite:///{tmp_path}/optuna.db"
    command = [sys.executable, "-m", "search.run", "--space", small_cnn, "--data", str(fer_slice),
               "--results", str(tmp_path), "--storage", db, "--trials", "3", "--epochs", "1", "--min-epochs", "1",
               "--set", "batch_size=32", "--sampler", "random", "--pruner", "none", "--fresh", "--timeout", "600",
               "--memory-limit", "15"]  # 10 MB after trial 1, and one trial adds 10: past 15 before trial 2
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=os.environ | {"PYTHONPATH": f"{hook}{os.pathsep}{REPO}"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("going on in a fresh process") == 1  # before trial 2; trial 2 ends the budget
    assert "resident memory grew 10 MB since this process's first trained trial (TensorFlow's idle tensor pool left " \
        "out), and one trial has added up to 10 MB" in done.stdout
    assert done.stdout.count("study 'small_cnn' in") == 2  # the fresh process resumed the same study...
    study = optuna.load_study(study_name="small_cnn", storage=db)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3  # ...without --fresh deleting it
    assert sum(bool(t.user_attrs.get("default_point")) for t in study.trials) == 1
    assert done.stdout.count("leaderboard: ") == 1 and (tmp_path / "small_cnn" / "trials.csv").exists()


def test_a_fresh_process_knows_how_much_one_trial_can_add(monkeypatch):
    """The largest growth of one trial carries over to the fresh process: told that a trial once added
    150 MB, a process under a 100 MB limit goes on afresh after its first trial instead of finding out
    again by passing the limit; told nothing, it runs a second trial."""
    from search import optuna_driver

    monkeypatch.setattr(optuna_driver, "resident_mb", lambda: 1000.0)
    monkeypatch.setattr(optuna_driver, "pool_idle_mb", lambda: 0.0)
    informed, naive = optuna_driver._MemoryWatch(100, prior_step=150), optuna_driver._MemoryWatch(100)
    assert not informed.full() and not naive.full()  # nothing is known before the first trial ends
    informed.trial_ended()
    assert informed.full()
    naive.trial_ended()
    assert not naive.full()


def test_trials_in_one_process_leave_no_training_graph_behind(small_cnn, fer_slice):
    """Each trial traces a new training step. Once its model is dropped and collected, nothing may keep
    that graph (and the variables it captures) alive: TensorFlow's gradient registry did, one a trial."""
    import gc

    from tensorflow.python.framework.func_graph import FuncGraph

    from search.data import load_fer2013
    from search.objective import Objective
    from search.space import load_space

    space = load_space(small_cnn).with_settings(epochs=1, min_epochs=1).with_fixed({"batch_size": 32})
    objective = Objective(load_fer2013(fer_slice), space, log=None)

    def graphs_after_a_trial() -> int:
        result = objective(space.defaults())
        assert result.model.optimizer.iterations.numpy() > 0  # it trained
        del result
        gc.collect()
        return sum(isinstance(o, FuncGraph) for o in gc.get_objects())

    first = graphs_after_a_trial()
    assert [graphs_after_a_trial() for _ in range(2)] == [first, first]
