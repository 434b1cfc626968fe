"""The KerasTuner driver: the same space and the same objective, searched by KerasTuner.

    python -m search.run --space baseline_cnn --driver kerastuner [--tuner hyperband|bayesian|random]

KerasTuner keeps its project under results/<study>/kerastuner/ (running the same command resumes it,
--fresh starts it over). Every finished trial also goes into the common trial table: the Optuna
study `<space>-kerastuner` (or --study-name) in the same storage the Optuna driver uses, with the
same user attributes, so reports, exports and `search.train` do not care which driver ran it.

Hyperband's resource is epochs (at most the space's `budget.epochs`, at least its `min_epochs`). A
configuration Hyperband promotes to more epochs is trained again from scratch for them, not
continued from its checkpoint: each trial is then one configuration trained for a known number of
epochs with one seed, exactly what an Optuna trial is, at the price of repeating the first epochs.

The first new configuration of a project is the space's default point (the seed's hand-tuned
configuration), as under Optuna; KerasTuner's own oracles would start with a random one.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import keras_tuner as kt
import optuna
from optuna.trial import TrialState

from search import interrupts
from search.cli import UsageError
from search.kerastuner_sampling import config_from_hp, default_values
from search.optuna_driver import SearchStopped, StudyMismatch, _trial_line, check_same_space, tag_study
from search.optuna_sampling import suggest
from search.space import Space

TUNERS = ("hyperband", "bayesian", "random")
DRIVER = "kerastuner"
PROJECT = "kerastuner"  # results/<study>/kerastuner/
OUTCOME = "fer_search.json"  # per KerasTuner trial folder: what the trial table records
PROJECT_FILE = "fer_search_project.json"


class ProjectMismatch(StudyMismatch):
    """The KerasTuner project on disk was started with another tuner or another space."""


# -- oracles: the default point first -------------------------------------------------------------


class _DefaultFirst:
    """Makes the first configuration of a fresh project the space's default point."""

    defaults: dict[str, Any] = {}

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        response = super().populate_space(trial_id)  # type: ignore[misc]
        values = response.get("values") or {}
        first = not self.trials  # type: ignore[attr-defined]
        if response.get("status") == "RUNNING" and first and "tuner/trial_id" not in values:
            bookkeeping = {k: v for k, v in values.items() if k.startswith("tuner/")}  # Hyperband's epochs
            response["values"] = dict(self.defaults) | bookkeeping
        return response


class RandomOracle(_DefaultFirst, kt.oracles.RandomSearchOracle):
    pass


class BayesianOracle(_DefaultFirst, kt.oracles.BayesianOptimizationOracle):
    pass


class HyperbandOracle(_DefaultFirst, kt.oracles.HyperbandOracle):
    def __init__(self, *args: Any, min_epochs: int = 1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # KerasTuner 1.4.8 fixes the smallest bracket's floor at 1 epoch; early FER2013 epochs are too
        # noisy to rank on, so the space's min_epochs sets it (a fresh oracle only: a reloaded one
        # takes its brackets from its saved state).
        self.min_epochs = min_epochs
        self._current_bracket = self._get_num_brackets() - 1
        self._brackets = []
        self._start_new_bracket()


def make_oracle(kind: str, space: Space, *, max_trials: int, seed: int) -> kt.Oracle:
    """A KerasTuner oracle of `kind` maximising validation accuracy, the default point first."""
    common = dict(
        objective=kt.Objective("val_accuracy", direction="max"),
        seed=seed + 1,  # KerasTuner reads seed 0 as "pick one at random"
        max_retries_per_trial=0,  # a configuration that failed fails again; the search goes on
        # counted by FerTuner instead, after KerasTuner has saved the trial (it raises before saving)
        max_consecutive_failed_trials=None,
    )
    if kind == "random":
        oracle = RandomOracle(max_trials=max_trials, **common)
    elif kind == "bayesian":
        try:
            import scipy  # noqa: F401  KerasTuner's Gaussian process needs both
            import sklearn  # noqa: F401
        except ImportError:
            raise UsageError("--tuner bayesian needs scipy and scikit-learn: pip install 'keras-tuner[bayesian]', "
                             "or use --tuner hyperband or random") from None
        # random points before the Gaussian process takes over: KerasTuner's default (3 per
        # hyperparameter, 39 for baseline_cnn) outlasts most budgets; 5 as the Optuna driver's TPE
        oracle = BayesianOracle(max_trials=max_trials, num_initial_points=5, **common)
    elif kind == "hyperband":
        # hyperband_iterations=None: brackets without end, --trials bounds the search
        oracle = HyperbandOracle(max_epochs=space.budget.epochs, factor=3, hyperband_iterations=None,
                                 min_epochs=space.budget.min_epochs, **common)
        oracle.max_trials = max_trials  # --trials bounds Hyperband too (promotions count as trials)
    else:
        raise ValueError(f"unknown tuner {kind!r}; choose one of {', '.join(TUNERS)}")
    oracle.defaults = default_values(space)
    return oracle


# -- the hypermodel and the tuner -----------------------------------------------------------------


class SpaceHyperModel(kt.HyperModel):
    """Declares a space to KerasTuner. `build` returns the configuration, not a model: the shared
    objective builds and trains the model, as it does under Optuna."""

    def __init__(self, space: Space):
        super().__init__(name=space.name)
        self.space = space

    def build(self, hp: kt.HyperParameters) -> dict[str, Any]:
        return config_from_hp(hp, self.space)


class _TimeUp(Exception):
    pass


class FerTuner(kt.Tuner):
    """Runs each KerasTuner trial through the shared objective and records it in the trial table.

    Args:
        oracle: from `make_oracle`.
        space: the search space.
        objective: `search.objective.Objective` (config in, TrialResult out).
        table: where finished trials are recorded.
        deadline: `time.monotonic()` after which no trial starts.
        max_failures: stop after this many failed trials in a row.
    """

    def __init__(self, oracle: kt.Oracle, space: Space, objective: Callable[..., Any], table: TrialTable, *,
                 directory: Path, overwrite: bool, deadline: float | None = None, max_failures: int = 3,
                 log: Callable[[str], None] = print):
        self.space, self.objective, self.table, self.log = space, objective, table, log
        self.deadline, self.max_failures, self.failures = deadline, max_failures, 0
        self.ran = 0
        self._outcomes: dict[str, dict[str, Any]] = {}
        with contextlib.redirect_stdout(io.StringIO()):  # KerasTuner announces reloading; we say it ourselves
            super().__init__(oracle, SpaceHyperModel(space), directory=str(directory), project_name=PROJECT,
                             overwrite=overwrite)

    def pre_create_trial(self) -> None:
        interrupts.check()
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise _TimeUp

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> dict[str, float]:
        hp = trial.hyperparameters
        config = config_from_hp(hp, self.space)
        epochs = hp.values.get("tuner/epochs")  # Hyperband's resource; None: the space's budget
        history: list[dict[str, float]] = []
        outcome: dict[str, Any] = {
            "trial_id": trial.trial_id,
            "config": config,
            "history": history,
            "intermediate_values": {},
            # the oracle's first trial (ids count from 0); a distributed worker's oracle proxy has no start_order
            "default_point": int(trial.trial_id) == 0,
            "datetime_start": _now(),
        }
        bookkeeping = {k.removeprefix("tuner/"): v for k, v in hp.values.items() if k.startswith("tuner/")}
        if bookkeeping:  # Hyperband's epochs, initial_epoch, bracket, round and the trial it promotes
            outcome["hyperband"] = bookkeeping
            if "trial_id" in bookkeeping:
                self.log(f"trial {int(trial.trial_id)} | Hyperband promotes trial {int(bookkeeping['trial_id'])}'s "
                         f"configuration to {epochs} epochs (trained again from scratch)")
        self._outcomes[trial.trial_id] = outcome

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            history.append({k: v for k, v in row.items() if k != "best_val_accuracy"})
            outcome["intermediate_values"][epoch + 1] = row["best_val_accuracy"]
            interrupts.check()  # after the epoch is recorded

        try:
            result = self.objective(config, epochs=epochs, on_epoch=on_epoch, label=f"trial {int(trial.trial_id)}")
        except Exception as exc:
            outcome["fail_reason"] = f"{type(exc).__name__}: {exc}"[:2000]
            raise
        outcome.update(value=result.value, metrics=result.metrics, history=result.history)
        return {"val_accuracy": result.value}

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        outcome = self._outcomes.pop(trial.trial_id)
        outcome["state"] = "COMPLETE" if trial.status == kt.engine.trial.TrialStatus.COMPLETED else "FAIL"
        if outcome["state"] == "FAIL" and "fail_reason" not in outcome:
            outcome["fail_reason"] = (trial.message or "KerasTuner marked the trial failed").strip().splitlines()[-1]
        outcome["datetime_complete"] = _now()
        # Written before KerasTuner ends the trial: should the process die in between, KerasTuner
        # runs the trial again and the record is rewritten; die after, and `sync` picks it up.
        _write_json(Path(self.get_trial_dir(trial.trial_id)) / OUTCOME, outcome)
        super().on_trial_end(trial)
        self.ran += 1
        for frozen in self.table.sync(Path(self.project_dir)):
            self.log(self.table.line(frozen))
        self.failures = self.failures + 1 if outcome["state"] == "FAIL" else 0
        if self.failures >= self.max_failures:
            raise SearchStopped(
                f"{self.failures} trials in a row failed; the last one said: {outcome['fail_reason']}. "
                f"Fix that, then run the same command again to resume"
            )

    def save_model(self, trial_id: str, model: Any, step: int = 0) -> None:
        pass  # the objective keeps the best epoch's weights; `search.train` trains the winner again


# -- the trial table ------------------------------------------------------------------------------


class TrialTable:
    """Records finished KerasTuner trials in an Optuna study, once each.

    A trial is known by its project (a random id written into the KerasTuner project folder, so a
    project started over never collides with an old one) and its KerasTuner trial id.
    """

    def __init__(self, study: optuna.Study, space: Space, project_id: str, tuner: str):
        self.study, self.space, self.project_id, self.tuner = study, space, project_id, tuner

    def recorded(self) -> set[str]:
        return {
            t.user_attrs["kerastuner_trial_id"]
            for t in self.study.get_trials(deepcopy=False)
            if t.user_attrs.get("driver") == DRIVER and t.user_attrs.get("kerastuner_project") == self.project_id
        }

    def sync(self, project_dir: Path) -> list[optuna.trial.FrozenTrial]:
        """Add every finished trial of the project the study does not hold yet; return them."""
        done = self.recorded()
        added = []
        for path in sorted(project_dir.glob(f"trial_*/{OUTCOME}"), key=lambda p: int(p.parent.name[6:])):
            outcome = json.loads(path.read_text())
            if outcome.get("state") is None or outcome["trial_id"] in done:
                continue
            self.study.add_trial(self.frozen(outcome))
            added.append(self._find(outcome["trial_id"]))
        return added

    def _find(self, trial_id: str) -> optuna.trial.FrozenTrial:
        # from the end: in a shared study an Optuna worker may have added a trial since
        for t in reversed(self.study.get_trials(deepcopy=False)):
            attrs = t.user_attrs
            if (attrs.get("kerastuner_trial_id"), attrs.get("kerastuner_project")) == (trial_id, self.project_id):
                return t
        raise LookupError(f"KerasTuner trial {trial_id} was added to study {self.study.study_name!r} but is not there")

    def frozen(self, outcome: dict[str, Any]) -> optuna.trial.FrozenTrial:
        params, distributions = optuna_params(self.space, outcome["config"])
        complete = outcome["state"] == "COMPLETE"
        user_attrs = {
            "driver": DRIVER,
            "config": outcome["config"],
            "metrics": outcome.get("metrics", {}),
            "history": outcome["history"],
            "default_point": outcome["default_point"],
            "kerastuner_trial_id": outcome["trial_id"],
            "kerastuner_project": self.project_id,
            "kerastuner_tuner": self.tuner,
        }
        for key in ("fail_reason", "hyperband"):
            if key in outcome:
                user_attrs[key] = outcome[key]
        trial = optuna.trial.create_trial(
            state=TrialState.COMPLETE if complete else TrialState.FAIL,
            value=outcome["value"] if complete else None,
            params=params,
            distributions=distributions,
            user_attrs=user_attrs,
            intermediate_values={int(k): v for k, v in outcome["intermediate_values"].items()},
        )
        trial.datetime_start = datetime.datetime.fromisoformat(outcome["datetime_start"])
        trial.datetime_complete = datetime.datetime.fromisoformat(outcome["datetime_complete"])
        return trial

    def line(self, frozen: optuna.trial.FrozenTrial) -> str:
        line = _trial_line(self.study, frozen)
        kt_id = int(frozen.user_attrs["kerastuner_trial_id"])
        return line if kt_id == frozen.number else f"{line} (kerastuner trial {kt_id})"


def optuna_params(space: Space, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A configuration's searchable values and their Optuna distributions, as the Optuna adapter
    would have suggested them (it is the Optuna adapter, run on a FixedTrial)."""
    searchable = space.searchable()
    trial = optuna.trial.FixedTrial({k: v for k, v in config.items() if k in searchable})
    suggest(trial, space)
    return trial.params, trial.distributions


def open_kt_study(space: Space, *, study_name: str, storage: optuna.storages.BaseStorage,
                  fresh: bool = False) -> optuna.Study:
    """Create or load the study the KerasTuner trials go into; --fresh deletes their earlier records.

    The study carries the same space attributes the Optuna driver writes, so either driver can
    resume it; unlike the Optuna driver it enqueues nothing (the oracle starts at the default point).
    """
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        study = None
    if study is not None and fresh:
        others = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("driver") != DRIVER]
        if others:
            raise StudyMismatch(
                f"study {study_name!r} also holds {len(others)} trial(s) of another driver; --fresh would "
                f"delete them with the KerasTuner ones (Optuna cannot delete single trials). Pass another "
                f"--study-name for a fresh KerasTuner search"
            )
        optuna.delete_study(study_name=study_name, storage=storage)
        study = None
    if study is not None:
        check_same_space(study, space)
    if study is None:
        try:
            study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize")
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it just now
            return open_kt_study(space, study_name=study_name, storage=storage)
        tag_study(study, space)
    return study


def open_project(directory: Path, space: Space, tuner: str, fresh: bool) -> str:
    """The id of the KerasTuner project in `directory`, refusing one of another tuner or space."""
    path = directory / PROJECT / PROJECT_FILE
    if fresh or not path.exists():
        return uuid.uuid4().hex[:12]
    meta = json.loads(path.read_text())
    if meta["tuner"] != tuner:
        raise ProjectMismatch(
            f"the KerasTuner project in {path.parent} was started with --tuner {meta['tuner']}; pass "
            f"--tuner {meta['tuner']} to resume it, or --fresh to start over with {tuner}"
        )
    if meta["space_fingerprint"] != space.fingerprint():
        raise ProjectMismatch(
            f"the KerasTuner project in {path.parent} searches another space (fingerprint "
            f"{meta['space_fingerprint']}, this one is {space.fingerprint()}); pass --study-name for a "
            f"new project, or --fresh to start this one over"
        )
    return meta["project"]


# -- the command ----------------------------------------------------------------------------------


def main(args: argparse.Namespace, space: Space) -> int:
    """`python -m search.run --driver kerastuner`: search `space` with KerasTuner."""
    from search import records
    from search.data import load_fer2013
    from search.objective import Objective
    from search.run import _log, _print_summary, _write_report
    from search.storage import open_storage, redact, resolve_url

    tuner_kind = getattr(args, "tuner", None) or "hyperband"
    url = resolve_url(args.storage, args.results)
    storage = open_storage(url, heartbeat=None)  # trials arrive finished: no heartbeat to keep
    study_name = args.study_name or f"{space.name}-{DRIVER}"
    directory = Path(args.results) / study_name
    role = os.environ.get("KERASTUNER_TUNER_ID") if "KERASTUNER_ORACLE_IP" in os.environ else None
    if role is not None and "chief" not in role:
        # a worker of a distributed search: its own project folder, so workers sharing a disk never
        # record each other's trials; the chief holds the oracle and its state
        directory = directory / "workers" / role
    data = load_fer2013(args.data, labels=space.labels, seed=args.seed)  # before the project and the study
    project_id = open_project(directory, space, tuner_kind, args.fresh)
    study = open_kt_study(space, study_name=study_name, storage=storage, fresh=args.fresh)

    oracle = make_oracle(tuner_kind, space, max_trials=args.trials, seed=args.seed)
    objective = Objective(data, space, seed=args.seed, log=_log)
    table = TrialTable(study, space, project_id, tuner_kind)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    tuner = FerTuner(oracle, space, objective, table, directory=directory, overwrite=args.fresh, deadline=deadline,
                     max_failures=args.max_failures, log=_log)
    _write_json(Path(tuner.project_dir) / PROJECT_FILE,
                {"project": project_id, "tuner": tuner_kind, "space_fingerprint": space.fingerprint()})
    for frozen in table.sync(Path(tuner.project_dir)):  # finished before an earlier run died
        _log(f"recorded earlier {table.line(frozen)}")
    oracle_at = f"{os.environ.get('KERASTUNER_ORACLE_IP')}:{os.environ.get('KERASTUNER_ORACLE_PORT')}"
    if role is None:
        held = f"{len(tuner.oracle.trials)} trials so far, {args.trials} wanted"
    elif "chief" in role:
        held = (f"{len(tuner.oracle.trials)} trials so far, {args.trials} wanted; chief serving {oracle_at} until "
                f"every trial ends")
    else:
        held = f"worker {role!r} of the chief at {oracle_at}"
    print(f"study {study_name!r} in {redact(url)}: {len(study.trials)} trials so far | KerasTuner {tuner_kind} in "
          f"{tuner.project_dir}: {held} | {space.model} on {len(data.train)} "
          f"training images x{space.budget.subset:g}, {data.num_classes} classes, up to {space.budget.epochs} "
          f"epochs a trial", flush=True)

    started, interrupted = time.monotonic(), False
    try:
        with interrupts.catching_ctrl_c():
            tuner.search(verbose=0)
    except _TimeUp:
        _log(f"timeout reached after {tuner.ran} trials")
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: the running trial runs again when you run the same command", flush=True)
    finally:
        paths = records.write_outputs(study, args.results, redact(url))
        _write_report(study, args.results, redact(url))
    _print_summary(study, space, paths, time.monotonic() - started)
    return 130 if interrupted else 0


def _now() -> str:
    return datetime.datetime.now().isoformat()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
