"""Replay recorded learning curves through a pruner: what it would have spent and kept, with no training.

A search without pruning (`--pruner none`) records every trial's full curve. Those curves are the
truth about each configuration, so any pruner can be run over them afterwards: the same trials, in the
same order, on as many simulated workers, each epoch taking the time it took, the pruner asked after
every epoch as in a real search. What comes out is the epochs the pruner would have let each trial
train and which trials it would have let finish: the cost and the accuracy of that pruner on those very
configurations, measured side by side from one run, free of the sampler and of run-to-run noise.

What a replay cannot show is a sampler reacting to pruning (TPE sampling from what pruned trials
reached): the configurations are the recorded ones.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState


@dataclass(frozen=True)
class Curve:
    """One recorded trial: what it reported after each epoch and how long each epoch took."""

    number: int
    values: tuple[float, ...]  # the reported value (best validation accuracy so far) after epoch 1, 2, ...
    seconds: tuple[float, ...]
    user_attrs: dict = field(default_factory=dict, hash=False, compare=False)  # what pruners read
    failed: bool = False  # ended as failed after its last recorded epoch (a NaN loss, say)


@dataclass
class Outcome:
    number: int
    epochs: int
    state: str  # COMPLETE, PRUNED or FAIL
    value: float | None  # the best value reported (None: failed before its first epoch)


@dataclass
class Replay:
    outcomes: list[Outcome]
    subset: float

    @property
    def epochs(self) -> int:
        return sum(o.epochs for o in self.outcomes)

    @property
    def epoch_equivalents(self) -> float:
        return self.epochs * self.subset

    @property
    def best(self) -> Outcome | None:
        """The best complete trial, as a search reports it (a pruned trial's value is not a result)."""
        done = [o for o in self.outcomes if o.state == "COMPLETE"]
        return max(done, key=lambda o: (o.value, -o.number)) if done else None

    def full(self) -> list[int]:
        return [o.number for o in self.outcomes if o.state == "COMPLETE"]


def curves_from(study: optuna.Study) -> list[Curve]:
    """The recorded curves of a study, in trial-number order.

    Every trial's number is kept (Hyperband assigns brackets by number); a trial that trained no epoch
    replays as one that fails at once. Refuses a study whose trials were pruned: their curves stop
    where that run's pruner stopped them, and a replay needs to know how they would have gone on.
    """
    curves = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state == TrialState.PRUNED:
            raise ValueError(f"study {study.study_name!r}: trial {t.number} was pruned, so its curve is cut short; "
                             "replay a study run with --pruner none")
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            raise ValueError(f"study {study.study_name!r}: trial {t.number} is {t.state.name.lower()}; "
                             "replay a finished study (resume it first, or wait for its workers)")
        steps = sorted(t.intermediate_values)
        if steps != list(range(1, len(steps) + 1)):
            raise ValueError(f"study {study.study_name!r}: trial {t.number} reported epochs {steps}, "
                             "not 1, 2, ... in order; this is not a fer-search study")
        history = t.user_attrs.get("history") or []
        seconds = [float(row.get("seconds", 1.0)) for row in history[:len(steps)]]
        seconds += [1.0] * (len(steps) - len(seconds))  # a study recorded without epoch times: unit epochs
        attrs = {"chance_threshold": t.user_attrs["chance_threshold"]} if "chance_threshold" in t.user_attrs else {}
        curves.append(Curve(t.number, tuple(t.intermediate_values[s] for s in steps), tuple(seconds), attrs,
                            failed=t.state == TrialState.FAIL))
    return curves


def replay(curves: list[Curve], pruner: optuna.pruners.BasePruner, *, study_name: str, workers: int = 1,
           subset: float = 1.0) -> Replay:
    """Run `curves` through `pruner` on `workers` simulated workers, in an in-memory study named
    `study_name` (Hyperband's brackets depend on the name and the trial numbers).

    Each worker takes the next trial when its last one ends; epochs take their recorded seconds, and
    the pruner sees, at each report, every report made before it in that simulated time, as Optuna's
    storage would show it to a real worker.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    study = optuna.create_study(study_name=study_name, direction="maximize", pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    pending = iter(curves)
    outcomes: dict[int, Outcome] = {}
    events: list[tuple[float, int, int]] = []  # (time an epoch ends, order of issue, trial number)
    running: dict[int, tuple[Curve, optuna.Trial, int]] = {}  # curve, its trial, epochs reported
    issued = 0

    def start(now: float) -> None:
        nonlocal issued
        for curve in pending:
            trial = study.ask()
            if trial.number != curve.number:
                raise ValueError(f"curves must be numbered 0, 1, 2, ... in order: got trial {curve.number} "
                                 f"where trial {trial.number} comes next")
            for key, value in curve.user_attrs.items():
                trial.set_user_attr(key, value)
            if not curve.values:  # failed before its first epoch
                study.tell(trial, state=TrialState.FAIL)
                outcomes[curve.number] = Outcome(curve.number, 0, "FAIL", None)
                continue
            running[curve.number] = (curve, trial, 0)
            heapq.heappush(events, (now + curve.seconds[0], issued, curve.number))
            issued += 1
            return

    for _ in range(workers):
        start(0.0)
    while events:
        now, _, number = heapq.heappop(events)
        curve, trial, done = running[number]
        epoch = done + 1
        running[number] = (curve, trial, epoch)
        trial.report(curve.values[epoch - 1], step=epoch)
        state = None
        if trial.should_prune():  # asked after every epoch, the last too, as the objective does
            state = TrialState.PRUNED
        elif epoch == len(curve.values):
            state = TrialState.FAIL if curve.failed else TrialState.COMPLETE
        if state is None:
            heapq.heappush(events, (now + curve.seconds[epoch], issued, number))
            issued += 1
            continue
        best = max(curve.values[:epoch])  # what the objective returns: its best epoch
        study.tell(trial, best if state == TrialState.COMPLETE else None, state=state)
        outcomes[number] = Outcome(number, epoch, state.name, best)
        del running[number]
        start(now)
    return Replay([outcomes[c.number] for c in curves], subset)
