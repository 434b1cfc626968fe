"""ChancePruner: a trial still at chance is pruned once an earlier trial has left chance by that epoch."""
from __future__ import annotations

import optuna
from optuna.trial import TrialState

from search.objective import TrialResult
from search.optuna_driver import REDUCTION_FACTOR, ChancePruner, OptunaObjective, make_pruner, open_study, run_search
from search.space import load_space

CHANCE = 0.264  # majority share 0.249 + two standard errors, as on FER2013's PublicTest


class _Curves:
    """A fake objective: each configuration's validation curve is looked up by its dropout."""

    chance_threshold = CHANCE

    def __init__(self, curves: dict[float, list[float]]):
        self.curves = curves

    def __call__(self, config, *, on_epoch, label):
        best, history = -1.0, []
        for epoch, acc in enumerate(self.curves[config["dropout"]]):
            best = max(best, acc)
            history.append({"val_accuracy": acc})
            on_epoch(epoch, {"val_accuracy": acc, "best_val_accuracy": best})
        return TrialResult(value=best, metrics={"epochs_run": len(history)}, history=history)


def search(tmp_path, pruner, curves: dict[float, list[float]], order: list[float], min_epochs: int = 2):
    space = load_space("baseline_cnn").with_settings(epochs=6, min_epochs=min_epochs)
    tmp_path.mkdir(exist_ok=True)
    study = open_study(space, study_name="s", storage=f"sqlite:///{tmp_path}/s.db",
                       sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner(space))
    for dropout in order[1:]:  # the default point (dropout 0.25) comes first
        study.enqueue_trial({"dropout": dropout})
    run_search(study, OptunaObjective(_Curves(curves), space), n_trials=len(order), log=lambda line: None)
    return study.trials


PLATEAU = [0.249] * 6
LEARNS = [0.249, 0.30, 0.33, 0.36, 0.38, 0.40]


def test_a_trial_at_chance_is_pruned_where_an_earlier_one_had_left_it(tmp_path):
    first, stuck = search(tmp_path, lambda s: ChancePruner(optuna.pruners.NopPruner(), min_step=2),
                          {0.25: LEARNS, 0.4: PLATEAU}, [0.25, 0.4])
    assert first.state == TrialState.COMPLETE and first.user_attrs["chance_threshold"] == CHANCE
    assert stuck.state == TrialState.PRUNED and max(stuck.intermediate_values) == 2  # epoch 2: first was at 0.30


def test_ties_at_chance_prune_nothing_without_evidence_and_nothing_before_min_epochs(tmp_path):
    trials = search(tmp_path, lambda s: ChancePruner(optuna.pruners.NopPruner(), min_step=3),
                    {0.25: PLATEAU, 0.4: PLATEAU, 0.3: [0.249, 0.30, 0.249, 0.249, 0.249, 0.249]}, [0.25, 0.4, 0.3])
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3  # nobody left chance by epoch 3 on


def test_the_default_pruners_prune_at_chance_and_none_never_does(tmp_path):
    curves, order = {0.25: LEARNS, 0.4: PLATEAU}, [0.25, 0.4]
    assert search(tmp_path / "h", lambda s: make_pruner("hyperband", s), curves, order)[1].state == TrialState.PRUNED
    assert search(tmp_path / "n", lambda s: make_pruner("none", s), curves, order)[1].state == TrialState.COMPLETE


def test_a_trial_that_trained_every_epoch_is_never_pruned(tmp_path):
    # Hyperband with min_epochs 2 and 6 epochs has a rung at 6, the last epoch: a trial below the
    # rung's best there would be pruned after training in full.
    better = [0.249, 0.30, 0.33, 0.36, 0.38, 0.45]
    worse = [0.249, 0.31, 0.33, 0.36, 0.38, 0.40]  # ahead at the rung at 2, so the quota lets it on too
    trials = search(tmp_path, lambda s: make_pruner("halving", s), {0.25: better, 0.4: worse}, [0.25, 0.4])
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2


class _InTurn(_Curves):
    """A fake objective: the n-th trial trains the n-th curve."""

    def __init__(self, curves: list[list[float]]):
        self.turns = iter(curves)

    def __call__(self, config, *, on_epoch, label):
        return _Curves({config["dropout"]: next(self.turns)})(config, on_epoch=on_epoch, label=label)


def hyperband_search(tmp_path, pruner, curves: list[list[float]]):
    """12 epochs, rungs from epoch 2: Hyperband has two brackets, ranking at epochs 2 and 6, or 6 alone.
    Optuna assigns trials to brackets by a hash of the study's name and the trial's number; under this
    name trial 0 is in the first bracket and trial 1 the first in the second."""
    space = load_space("baseline_cnn").with_settings(epochs=12, min_epochs=2)
    tmp_path.mkdir(exist_ok=True)
    study = open_study(space, study_name="search", storage=f"sqlite:///{tmp_path}/s.db",
                       sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner(space))
    run_search(study, OptunaObjective(_InTurn(curves), space), n_trials=len(curves), log=lambda line: None)
    return study


LEADER = [0.30, 0.36, 0.40, 0.43, 0.45, 0.47, 0.48, 0.49, 0.50, 0.51, 0.52, 0.53]  # the default point


def behind(n: int) -> list[float]:
    """Above chance from epoch 2, behind the leader and every earlier `behind` at every epoch: no ties."""
    return [v - 0.01 * n for v in LEADER]


def _plain_hyperband(space):
    return ChancePruner(optuna.pruners.HyperbandPruner(min_resource=2, max_resource=12, reduction_factor=REDUCTION_FACTOR),
                        min_step=2, max_step=12)


def test_hyperband_lets_no_trial_through_a_rung_only_for_arriving_there_first(tmp_path):
    curves = [LEADER] + [behind(n) for n in range(1, 8)]
    plain = hyperband_search(tmp_path / "plain", _plain_hyperband, curves)
    pooled = hyperband_search(tmp_path / "pooled", lambda s: make_pruner("hyperband", s), curves)
    # Optuna's Hyperband: trial 1, behind the leader at every epoch, trained all 12, promoted as the
    # first of its bracket at its rung. Pooled: only the leader did.
    assert [t.number for t in plain.trials if len(t.intermediate_values) == 12] == [0, 1]
    assert [t.number for t in pooled.trials if len(t.intermediate_values) == 12] == [0]
    # Each bracket still ranks its trials no earlier than its own first rung.
    pruner = pooled.pruner.base
    assert {pruner.bracket(pooled, t) for t in pooled.trials} == {0, 1}
    for t in pooled.trials[1:]:
        assert max(t.intermediate_values) == pruner.rung_steps(pruner.bracket(pooled, t))[0]


def test_a_trial_ahead_of_the_study_at_its_rung_goes_on(tmp_path):
    ahead = [v + 0.02 for v in LEADER]
    study = hyperband_search(tmp_path, lambda s: make_pruner("hyperband", s), [LEADER, ahead, ahead, ahead])
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4


def _halving(space):
    """Successive halving without the quota, as Optuna has it, with the chance rule."""
    low, high = space.budget.min_epochs, space.budget.epochs
    return ChancePruner(optuna.pruners.SuccessiveHalvingPruner(min_resource=low, reduction_factor=REDUCTION_FACTOR),
                        min_step=low, max_step=high)


def _halving_with_quota(leaders: bool):
    from search.optuna_driver import PromotionQuota, halving_rungs

    def make(space):
        low, high = space.budget.min_epochs, space.budget.epochs
        base = optuna.pruners.SuccessiveHalvingPruner(min_resource=low, reduction_factor=REDUCTION_FACTOR)
        rungs = halving_rungs(low, high)
        return ChancePruner(PromotionQuota(base, lambda study, trial: rungs, leaders=leaders), min_step=low, max_step=high)
    return make


def test_halving_rungs_go_up_to_the_last_epoch():
    from search.optuna_driver import halving_rungs

    assert halving_rungs(2, 12) == [2, 6] and halving_rungs(2, 18) == [2, 6, 18] and halving_rungs(2, 12, 4) == [2, 8]
    assert halving_rungs(3, 3) == [3] and halving_rungs(6, 5) == []


def test_a_quota_holds_each_rung_to_a_third_when_every_trial_improves_on_the_last(tmp_path):
    # An improving sampler: each trial is behind the leader but ahead of every trial before it, so
    # successive halving, ranking it against those, lets more than a third through its rung at 2.
    curves = [LEADER] + [behind(9 - n) for n in range(1, 9)]
    plain = hyperband_search(tmp_path / "plain", _halving, curves)
    quota = hyperband_search(tmp_path / "quota", lambda s: make_pruner("halving", s), curves)
    past = lambda study: [t.number for t in study.trials if max(t.intermediate_values) > 2]  # noqa: E731
    assert past(plain) == [0, 5, 6, 7, 8]
    assert past(quota) == [0, 5, 6]  # ceil(9 / 3): three of the nine that reached epoch 2
    assert sum(len(t.intermediate_values) for t in quota.trials) < sum(len(t.intermediate_values) for t in plain.trials)


def test_a_trial_ahead_of_every_other_at_its_rung_goes_on_past_a_full_quota_unless_strict(tmp_path):
    curves = [[v + 0.01 * n for v in LEADER] for n in range(6)]  # each ahead of all before it
    leaders = hyperband_search(tmp_path / "leaders", _halving_with_quota(leaders=True), curves)
    strict = hyperband_search(tmp_path / "strict", _halving_with_quota(leaders=False), curves)
    assert [t.state for t in leaders.trials] == [TrialState.COMPLETE] * 6
    # strict: trial 1 finds trial 0 gone on from epoch 2 and ceil(2 / 3) = 1 place: pruned, though ahead;
    # a second place opens with the fourth trial at the rung (trial 3), which then meets a full rung at 6
    assert [(t.number, max(t.intermediate_values)) for t in strict.trials] == [(0, 12), (1, 2), (2, 2), (3, 6), (4, 2), (5, 2)]
