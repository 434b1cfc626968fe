"""The Optuna driver: a study per space, the default point first, pruning on every epoch.

Pruning reads the best validation accuracy so far, not the epoch's own: early epochs on FER2013 jump
by tens of points (0.17 -> 0.44 between two epochs has been seen), and a pruner that trusts one bad
epoch throws good configurations away. No trial is pruned before the space's `min_epochs`.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import optuna
from optuna.pruners._successive_halving import _is_trial_promotable_to_next_rung
from optuna.trial import TrialState

from search import interrupts
from search.memory import pool_idle_mb, resident_mb, return_freed_memory
from search.optuna_sampling import enqueue_params, suggest
from search.space import Space

SAMPLERS = ("random", "tpe", "qmc")
PRUNERS = ("hyperband", "median", "halving", "none")
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
REDUCTION_FACTOR = 3  # successive halving and Hyperband keep the top third at each rung


INTERRUPTED = "interrupted (Ctrl-C)"


class StudyMismatch(ValueError):
    """The study name exists in the storage with another space."""


class SearchStopped(RuntimeError):
    """Too many trials in a row failed: something is wrong with the space or the data."""


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # constant_liar keeps parallel workers from sampling the same point while trials run
        return TrialSeeded(lambda s: optuna.samplers.TPESampler(
            seed=s, multivariate=True, group=True, constant_liar=True, n_startup_trials=5), seed)
    if name == "random":
        return TrialSeeded(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    if name == "qmc":
        # QMC indexes its sequence by the study's trials: one seed in every worker is what it wants
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


class TrialSeeded(optuna.samplers.BaseSampler):
    """A sampler made afresh for every trial, seeded by (seed, trial number).

    One seeded sampler per process replays one random sequence: two workers started with the same
    command, or a study resumed by a new process, would sample the same points again (trial 3 of the
    resumed run repeating trial 1). Seeded by trial number, trial k gets its own draws whichever
    process runs it. TPE and random sampling keep nothing between trials but the study itself, so
    making them afresh loses nothing.
    """

    def __init__(self, make: Callable[[int | None], optuna.samplers.BaseSampler], seed: int | None):
        self._make, self._seed = make, seed
        self._inner = self._build(seed)

    def _build(self, seed: int | None) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():  # TPE's multivariate and group have been "experimental" for years
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return self._make(seed)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        seed = None
        if self._seed is not None:
            seed = int(np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0])
        self._inner = self._build(seed)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_pruner(name: str, space: Space) -> optuna.pruners.BasePruner:
    budget = space.budget
    if name == "hyperband":
        base = PooledHyperband(min_resource=budget.min_epochs, max_resource=budget.epochs,
                               reduction_factor=REDUCTION_FACTOR)
    elif name == "median":
        base = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=budget.min_epochs)
    elif name == "halving":
        rungs = halving_rungs(budget.min_epochs, budget.epochs)
        base = PromotionQuota(
            optuna.pruners.SuccessiveHalvingPruner(min_resource=budget.min_epochs, reduction_factor=REDUCTION_FACTOR),
            lambda study, trial: rungs)
    elif name == "none":
        return optuna.pruners.NopPruner()
    else:
        raise ValueError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")
    return ChancePruner(base, min_step=budget.min_epochs, max_step=budget.epochs)


class PooledHyperband(optuna.pruners.BasePruner):
    """Optuna's `HyperbandPruner`, with one change: a trial its bracket promotes at a rung where the
    bracket holds fewer than `reduction_factor` trials (itself included) is ranked again against every
    trial of the study that reached the same epoch, in any bracket, and pruned unless it is in their
    top 1/eta.

    Hyperband splits the trials among brackets and ranks a trial only within its own, and a rung with
    fewer than eta trials promotes a trial that is the best there: the first to arrive always is. In a
    study of a dozen trials each bracket's rungs are that small: measured, a trial ran all 12 epochs
    only because it was the first to reach its bracket's rung at epoch 6, behind the default point at
    that epoch (docs/performance.md). Each bracket still waits for its own first rung, so the trials
    Hyperband gives more epochs before judging them keep them; only the lone-arrival free pass goes.
    """

    def __init__(self, min_resource: int, max_resource: int, reduction_factor: int = REDUCTION_FACTOR):
        self.min_resource, self.max_resource, self.reduction_factor = min_resource, max_resource, reduction_factor
        self.hyperband = optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max_resource,
                                                        reduction_factor=reduction_factor)

    def bracket(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> int:
        # Optuna's own assignment, a private method (as is the promotion rule imported above):
        # tests/test_pruning.py pins what this class needs of them
        return self.hyperband._get_bracket_id(study, trial)

    def rung_steps(self, bracket: int) -> list[int]:
        """The epochs at which a trial of `bracket` is ranked: min_resource x eta^(bracket + k)."""
        return halving_rungs(self.min_resource * self.reduction_factor ** bracket, self.max_resource,
                             self.reduction_factor)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if self.hyperband.prune(study, trial):
            return True
        step = trial.last_step
        bracket = self.bracket(study, trial)
        if step is None or step not in self.rung_steps(bracket):
            return False
        others = [t for t in study.get_trials(deepcopy=False, states=BUDGET_STATES)
                  if t.number != trial.number and step in t.intermediate_values]
        if sum(self.bracket(study, t) == bracket for t in others) + 1 >= self.reduction_factor:
            return False  # the bracket had enough trials at this rung to rank this one itself
        value = trial.intermediate_values[step]
        # successive halving's own rule (top len // eta, the best while fewer than eta), on the pooled values
        return not _is_trial_promotable_to_next_rung(
            value, [t.intermediate_values[step] for t in others] + [value], self.reduction_factor, study.direction)


def halving_rungs(min_resource: int, max_resource: int, reduction_factor: int = REDUCTION_FACTOR) -> list[int]:
    """The epochs at which successive halving ranks a trial: min_resource x eta^k up to max_resource
    (a rung at the last epoch prunes nothing: `ChancePruner` never prunes there)."""
    steps, step = [], min_resource
    while step <= max_resource:
        steps.append(step)
        step *= reduction_factor
    return steps


class PromotionQuota(optuna.pruners.BasePruner):
    """Wraps successive halving or Hyperband: of the trials that reached a rung, at most one in
    `reduction_factor` goes on past it, counted over the whole study, unless it leads every trial
    that reached that epoch.

    Successive halving promotes a trial in the top 1/eta of the trials that reached its rung before
    it. For independent draws that is one trial in eta; for a sampler that improves, such as TPE, a
    new trial beats the earlier, worse ones more often, and more go on: measured, the first bracket's
    rungs at epochs 2 and 6 let half and then two thirds through, where Hyperband plans a third
    (docs/performance.md). The quota holds each rung to its share whatever the sampler does, so the
    search's cost is bounded by its budget; the leader's exception keeps a trial that is ahead of the
    whole study at the rung from waiting for a later trial to free a place.

    `rungs(study, trial)` gives the epochs at which the wrapped pruner ranks `trial`. The `halving`
    pruner is successive halving with this quota. Two workers reaching a rung at once may both take its
    last place: the share can be passed by one trial a rung.
    """

    def __init__(self, base: optuna.pruners.BasePruner, rungs: Callable[[optuna.Study, optuna.trial.FrozenTrial], list[int]],
                 reduction_factor: int = REDUCTION_FACTOR, leaders: bool = True):
        self.base, self.rungs, self.reduction_factor, self.leaders = base, rungs, reduction_factor, leaders

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if self.base.prune(study, trial):
            return True
        step = trial.last_step
        if step is None or step not in self.rungs(study, trial):
            return False
        others = [t for t in study.get_trials(deepcopy=False, states=BUDGET_STATES)
                  if t.number != trial.number and step in t.intermediate_values]
        value = trial.intermediate_values[step]
        if self.leaders and all(value > t.intermediate_values[step] for t in others):
            return False
        went_on = sum(max(t.intermediate_values) > step for t in others)
        return went_on + 1 > math.ceil((len(others) + 1) / self.reduction_factor)


class ChancePruner(optuna.pruners.BasePruner):
    """Wraps a pruner: from `min_step` on, it also prunes a trial whose best validation accuracy so far
    is not above chance (its `chance_threshold` user attribute) at an epoch where an earlier trial's
    already was.

    For their first epochs, most FER2013 configurations predict the majority class, so their
    accuracies tie at its share, and successive halving and Hyperband promote ties: every trial on
    that plateau went on (measured: in 12 random trials on a quarter of Training none left it before
    epoch 5, and 5 never did within 9 epochs; docs/performance.md). A tie on
    the plateau carries no evidence for a trial; another trial having left the plateau by the same
    epoch does, against it.

    Nothing is pruned at `max_step`, the last epoch: Hyperband's rung there (min_epochs x 3^k can
    equal it) would mark a fully trained trial pruned, saving nothing and dropping its result.
    """

    def __init__(self, base: optuna.pruners.BasePruner, min_step: int, max_step: int | None = None):
        self.base, self.min_step, self.max_step = base, min_step, max_step

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is not None and self.max_step is not None and step >= self.max_step:
            return False
        if self.base.prune(study, trial):
            return True
        threshold = trial.user_attrs.get("chance_threshold")
        if step is None or step < self.min_step or threshold is None:
            return False
        if trial.intermediate_values[step] > threshold:
            return False
        others = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        return any(t.number != trial.number and t.intermediate_values.get(step, -1.0) > threshold for t in others)


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
        check_same_space(study, space)
        if _default_point_interrupted(study):
            study.enqueue_trial(enqueue_params(space), user_attrs={"default_point": True})
        return study
    tag_study(study, space)
    study.enqueue_trial(enqueue_params(space), user_attrs={"default_point": True})
    return study


def tag_study(study: optuna.Study, space: Space) -> None:
    """Record the space in a new study, so reports can read it and other spaces are refused."""
    study.set_user_attr("space", space.dump(mode="json"))
    study.set_user_attr("space_name", space.name)
    study.set_user_attr("space_fingerprint", space.fingerprint())


def check_same_space(study: optuna.Study, space: Space) -> None:
    """Refuse to add trials of `space` to a study created with another space."""
    stored = study.user_attrs.get("space_fingerprint")
    if stored is not None and stored != space.fingerprint():
        raise StudyMismatch(
            f"study {study.study_name!r} already exists in this storage with another space "
            f"({study.user_attrs.get('space_name', '?')}, fingerprint {stored}; this one is "
            f"{space.fingerprint()}). Pass --study-name to start a new study, or --fresh to replace it"
        )


def _default_point_interrupted(study: optuna.Study) -> bool:
    """True when the default point only ever ended by Ctrl-C: a resumed study runs it again."""
    default = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("default_point")]
    return bool(default) and all(
        t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == INTERRUPTED for t in default)


class OptunaObjective:
    """Adapts the shared objective to `study.optimize`: sample, train, report, prune, record."""

    def __init__(self, objective: Callable[..., Any], space: Space):
        self.objective, self.space = objective, space

    def __call__(self, trial: optuna.Trial) -> float:
        config = suggest(trial, self.space)
        trial.set_user_attr("driver", "optuna")
        trial.set_user_attr("config", config)
        threshold = getattr(self.objective, "chance_threshold", None)
        if threshold is not None:  # ChancePruner reads it
            trial.set_user_attr("chance_threshold", threshold)
        history: list[dict[str, float]] = []

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            history.append({k: v for k, v in row.items() if k != "best_val_accuracy"})
            trial.set_user_attr("history", history)  # a pruned, interrupted or killed trial keeps its curve
            trial.report(row["best_val_accuracy"], step=epoch + 1)
            interrupts.check()  # after the epoch is recorded
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} at {row['best_val_accuracy']:.4f}")

        try:
            result = self.objective(config, on_epoch=on_epoch, label=f"trial {trial.number}")
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", INTERRUPTED)
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
    recycle: bool = False  # stopped because memory grew past the limit: go on in a fresh process
    memory_step: float = 0.0  # the largest growth of resident memory (MB) a trial has shown


class SurplusTrial(Exception):
    """A trial started when the trials numbered below it already filled the budget; it is not run."""


FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
AHEAD_STATES = (*BUDGET_STATES, TrialState.WAITING)


def run_search(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    n_trials: int | None,
    timeout: float | None = None,
    max_failures: int = 3,
    poll: float | None = None,
    memory_limit_mb: float | None = None,
    prior_memory_step_mb: float = 0.0,
    log: Callable[[str], None] = print,
) -> SearchSummary:
    """Run trials until the study holds `n_trials` finished ones (complete or pruned, counted over
    every worker and earlier runs), the timeout passes, or `max_failures` trials in a row fail.

    The budget is exact however many workers share the study:

    - a worker starts a trial only while finished + running trials are fewer than `n_trials`;
    - with `poll` (seconds between checks; for storages with heartbeats), a worker whose next trial
      would overshoot because other workers' trials are running waits for them instead of leaving,
      checking their heartbeats, so that a dead worker's trial is retried here, not left unfinished;
    - two workers may still start at the same instant for the last place. Right after `ask`, a
      trial counts the trials numbered below it that are finished, running or queued; if they fill
      the budget it ends at once as failed, unsampled and untrained, with the user attribute
      `surplus` (samplers, the budget and the failure count all ignore failed trials).

    With `memory_limit_mb`, it also stops (`recycle` set) before a trial that would take this
    process's resident memory (less what TensorFlow's tensor pool holds idle) more than that above
    where it was after its first trial to train an epoch (judging by the largest growth a trial has
    shown so far, `prior_memory_step_mb` carrying it over from the processes before this one). Each
    trial's model is collected and its memory handed back before the reading (`search.memory`); what
    still grows (memory fragmented past trimming, a library's caches) only a fresh process gives back.
    The caller then continues the study in one.
    """
    deadline = time.monotonic() + timeout if timeout else None
    summary, failures, waiting = SearchSummary(), 0, False
    finished: list[optuna.trial.FrozenTrial] = []
    guarded = _within_budget(objective, n_trials)
    memory = _MemoryWatch(memory_limit_mb, prior_memory_step_mb)
    while True:
        interrupts.check()
        # A dead worker's trial still looks RUNNING until its heartbeat is found stale: fail (and
        # requeue) those first so they do not hold places in the budget.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        # One read for both counts: with two, a trial finishing between them was counted in neither, and
        # this worker started a trial the budget had no place for (recorded as a failed surplus trial).
        states = [t.state for t in study.get_trials(deepcopy=False, states=(*FINISHED_STATES, TrialState.RUNNING))]
        running = states.count(TrialState.RUNNING)
        done = len(states) - running
        if n_trials is not None and done >= n_trials:
            break
        if deadline is not None and time.monotonic() >= deadline:
            log(f"timeout reached after {summary.ran} trials")
            break
        if n_trials is not None and done + running >= n_trials:
            if not poll:
                break
            if not waiting:
                log(f"the last {running} trial(s) of the budget run on other workers: waiting for them, "
                    f"ready to retry any whose worker dies")
                waiting = True
            time.sleep(poll)
            continue
        waiting = False
        if memory.full():
            log(f"resident memory grew {memory.grown:.0f} MB since this process's first trained trial (TensorFlow's "
                f"idle tensor pool left out), and one trial has added up to {memory.step:.0f} MB: the next could take "
                f"it past {memory_limit_mb:g} MB; going on in a fresh process")
            summary.recycle, summary.memory_step = True, memory.step
            break
        study.optimize(guarded, n_trials=1, catch=(Exception,), callbacks=[lambda s, t: finished.append(t)])
        trial = finished[-1]
        if trial.user_attrs.get("surplus"):
            log(f"trial {trial.number} not run: {trial.user_attrs['fail_reason']}")
            continue
        summary.ran += 1
        log(_trial_line(study, trial))
        failures = failures + 1 if trial.state == TrialState.FAIL else 0
        if failures >= max_failures:
            raise SearchStopped(
                f"{failures} trials in a row failed; the last one said: "
                f"{trial.user_attrs.get('fail_reason', 'no reason recorded')}. Fix that, then run the same "
                f"command again to resume"
            )
        memory.trial_ended(trained=bool(trial.intermediate_values))
    return summary


class _MemoryWatch:
    """Resident memory growth since the first trial that trained an epoch ended (TensorFlow's one-time
    set-up, validation's included, is in it: a trial that failed in its first epoch leaves part of it
    out), and the largest growth one trial has shown (`step`, seeded from earlier processes: without
    it, a fresh process would learn again by overshooting that a trial can add more than the limit).

    What TensorFlow's tensor pool holds idle is left out: the pool keeps the largest working set any
    trial had for the next trial's tensors, and a fresh process would grow it again as soon as a trial
    that large came (without this, one wide model sent every later trial to a fresh process)."""

    def __init__(self, limit_mb: float | None, prior_step: float = 0.0):
        self.limit, self.baseline, self.last = limit_mb, None, None
        self.step = max(prior_step, 0.0)

    @property
    def grown(self) -> float:
        return 0.0 if self.baseline is None else self.last - self.baseline

    def trial_ended(self, *, trained: bool = True) -> None:
        """Read the memory after a trial; `trained`: it ended at least one epoch."""
        if self.limit is None or (self.baseline is None and not trained):
            return
        return_freed_memory()  # the trial's model, collected and handed back: what is left is what stays
        rss = resident_mb()
        if rss is None:
            return
        level = rss - pool_idle_mb()
        if self.baseline is None:
            self.baseline = level
        else:
            self.step = max(self.step, level - self.last)
        self.last = level

    def full(self) -> bool:
        return self.baseline is not None and self.grown + self.step > self.limit


def _within_budget(objective: Callable[[optuna.Trial], float], n_trials: int | None) -> Callable[[optuna.Trial], float]:
    """The objective, run only when the trials numbered below this one leave room in the budget.

    Trial numbers follow creation order (the storage locks the study row to number a trial), and a
    trial that ends finished was running or queued at every moment before, so no two workers can
    both pass this check for the same last place.
    """
    if n_trials is None:
        return objective

    def run(trial: optuna.Trial) -> float:
        trials = trial.study.get_trials(deepcopy=False)
        ahead = sum(t.number < trial.number and t.state in AHEAD_STATES for t in trials)
        if ahead >= n_trials:
            mine = next(t for t in trials if t.number == trial.number)
            if mine.params or "fixed_params" in mine.system_attrs:  # a queued point (a retry): keep it queued
                trial.study.add_trial(optuna.trial.create_trial(
                    state=TrialState.WAITING, params=mine.params, distributions=mine.distributions,
                    user_attrs=mine.user_attrs, system_attrs=mine.system_attrs))
            reason = f"the {ahead} trials numbered below it already fill the budget of {n_trials}"
            trial.set_user_attr("surplus", True)
            trial.set_user_attr("fail_reason", f"{reason} (another worker took the last place at the same moment)")
            raise SurplusTrial(reason)
        return objective(trial)

    return run


class _QuietSurplus(logging.Filter):
    """Optuna logs every failed trial with its traceback; a surplus trial is no failure worth one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SurplusTrial" not in record.getMessage()


logging.getLogger("optuna.study._optimize").addFilter(_QuietSurplus())


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
