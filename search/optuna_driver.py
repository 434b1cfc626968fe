"""The Optuna driver: a study per space, the default point first, pruning on every epoch.

Pruning reads the best validation accuracy so far, not the epoch's own: early epochs on FER2013 jump
by tens of points (0.17 -> 0.44 between two epochs has been seen), and a pruner that trusts one bad
epoch throws good configurations away. No trial is pruned before the space's `min_epochs`.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from search.optuna_sampling import enqueue_params, suggest
from search.space import Space

SAMPLERS = ("tpe", "random", "qmc")
PRUNERS = ("hyperband", "median", "halving", "none")
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class StudyMismatch(ValueError):
    """The study name exists in the storage with another space."""


class SearchStopped(RuntimeError):
    """Too many trials in a row failed: something is wrong with the space or the data."""


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # constant_liar keeps parallel workers from sampling the same point while trials run
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=5)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, space: Space) -> optuna.pruners.BasePruner:
    budget = space.budget
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=budget.min_epochs, max_resource=budget.epochs,
                                              reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=budget.min_epochs)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=budget.min_epochs, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


def open_study(
    space: Space,
    *,
    study_name: str,
    storage: optuna.storages.BaseStorage,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    fresh: bool = False,
) -> optuna.Study:
    """Create the study (enqueueing the default point once) or load it, refusing another space."""
    if fresh:
        try:
            optuna.delete_study(study_name=study_name, storage=storage)
        except KeyError:
            pass
    try:
        # Only the process that creates the study enqueues the default point: the storage's unique
        # study name decides which one, so many workers starting at once still enqueue it once.
        study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                    sampler=sampler, pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
        stored = study.user_attrs.get("space_fingerprint")
        if stored is not None and stored != space.fingerprint():
            raise StudyMismatch(
                f"study {study_name!r} already exists in this storage with another space "
                f"({study.user_attrs.get('space_name', '?')}, fingerprint {stored}; this one is "
                f"{space.fingerprint()}). Pass --study-name to start a new study, or --fresh to replace it"
            ) from None
        return study
    study.set_user_attr("space", space.model_dump(mode="json", exclude_none=True))
    study.set_user_attr("space_name", space.name)
    study.set_user_attr("space_fingerprint", space.fingerprint())
    study.enqueue_trial(enqueue_params(space), user_attrs={"default_point": True})
    return study


class OptunaObjective:
    """Adapts the shared objective to `study.optimize`: sample, train, report, prune, record."""

    def __init__(self, objective: Callable[..., Any], space: Space):
        self.objective, self.space = objective, space

    def __call__(self, trial: optuna.Trial) -> float:
        config = suggest(trial, self.space)
        trial.set_user_attr("driver", "optuna")
        trial.set_user_attr("config", config)
        history: list[dict[str, float]] = []

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            history.append({k: v for k, v in row.items() if k != "best_val_accuracy"})
            trial.set_user_attr("history", history)  # a pruned or killed trial keeps its curve
            trial.report(row["best_val_accuracy"], step=epoch + 1)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} at {row['best_val_accuracy']:.4f}")

        try:
            result = self.objective(config, on_epoch=on_epoch, label=f"trial {trial.number}")
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:2000])
            raise
        trial.set_user_attr("metrics", result.metrics)
        return result.value


@dataclass
class SearchSummary:
    ran: int = 0
    interrupted: bool = False


def run_search(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    n_trials: int | None,
    timeout: float | None = None,
    max_failures: int = 3,
    log: Callable[[str], None] = print,
) -> SearchSummary:
    """Run trials until the study holds `n_trials` (counted over every worker), the timeout passes,
    or `max_failures` trials in a row fail."""
    deadline = time.monotonic() + timeout if timeout else None
    summary, failures = SearchSummary(), 0
    finished: list[optuna.trial.FrozenTrial] = []
    while True:
        # A dead worker's trial still looks RUNNING until its heartbeat is found stale: fail (and
        # requeue) those first so they do not hold places in the budget.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        counted = len(study.get_trials(deepcopy=False, states=BUDGET_STATES))
        if n_trials is not None and counted >= n_trials:
            break
        if deadline is not None and time.monotonic() >= deadline:
            log(f"timeout reached after {summary.ran} trials")
            break
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[lambda s, t: finished.append(t)])
        summary.ran += 1
        trial = finished[-1]
        log(_trial_line(study, trial))
        failures = failures + 1 if trial.state == TrialState.FAIL else 0
        if failures >= max_failures:
            raise SearchStopped(
                f"{failures} trials in a row failed; the last one said: "
                f"{trial.user_attrs.get('fail_reason', 'no reason recorded')}. Fix that, then run the same "
                f"command again to resume"
            )
    return summary


def _trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    state = trial.state.name.lower()
    if trial.state == TrialState.COMPLETE:
        what = f"val_acc {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        last = max(trial.intermediate_values.items(), default=(0, float("nan")))
        what = f"stopped at epoch {last[0]} with {last[1]:.4f}"
    else:
        what = trial.user_attrs.get("fail_reason", "no reason recorded")
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    try:
        best = f"best so far: trial {study.best_trial.number} at {study.best_value:.4f}"
    except ValueError:
        best = "no complete trial yet"
    return f"trial {trial.number} {state}: {what} in {seconds:.0f}s | {best}"
