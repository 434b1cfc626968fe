"""search.replay: recorded curves run through a pruner give what a real search with it would have done."""
from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from search.optuna_driver import ChancePruner, make_pruner
from search.replay import Curve, curves_from, replay
from search.space import load_space
from test_pruning import CHANCE, LEADER, LEARNS, PLATEAU, behind, hyperband_search

# A leader, seven trials behind it and each other, two that never leave chance: under the name
# hyperband_search uses, trials fall in both of Hyperband's brackets, and the chance rule has work.
CURVES = [LEADER] + [behind(n) for n in range(1, 8)] + [[0.249] * 12] * 2


def test_a_replay_does_what_the_search_with_that_pruner_did(tmp_path):
    unpruned = hyperband_search(tmp_path / "all", lambda s: make_pruner("none", s), CURVES)
    pruned = hyperband_search(tmp_path / "pruned", lambda s: make_pruner("hyperband", s), CURVES)
    assert {t.state for t in pruned.trials} == {TrialState.COMPLETE, TrialState.PRUNED}  # it pruned something

    curves = curves_from(unpruned)
    assert [len(c.values) for c in curves] == [12] * len(CURVES)
    assert all(c.user_attrs == {"chance_threshold": CHANCE} for c in curves)
    fresh = make_pruner("hyperband", load_space("baseline_cnn").with_settings(epochs=12, min_epochs=2))
    r = replay(curves, fresh, study_name=pruned.study_name)
    assert [(o.number, o.state, o.epochs) for o in r.outcomes] == [
        (t.number, t.state.name, len(t.intermediate_values)) for t in pruned.trials]
    assert r.epochs == sum(len(t.intermediate_values) for t in pruned.trials) < 12 * len(CURVES)
    assert r.best.number == 0 and r.full() == [t.number for t in pruned.trials if t.state == TrialState.COMPLETE]

    nothing = replay(curves, optuna.pruners.NopPruner(), study_name="any", subset=0.25)
    assert nothing.epochs == 12 * len(CURVES) and nothing.epoch_equivalents == 3 * len(CURVES)

    with pytest.raises(ValueError, match=r"trial \d+ was pruned.*--pruner none"):
        curves_from(pruned)


def test_workers_see_only_what_was_reported_before_them():
    # Trial 0 leaves chance at epoch 2 but takes 10 s an epoch; trial 1 stays at chance at 1 s an epoch.
    curves = [Curve(0, tuple(LEARNS), (10.0,) * 6, {"chance_threshold": CHANCE}),
              Curve(1, tuple(PLATEAU), (1.0,) * 6, {"chance_threshold": CHANCE})]
    chance = lambda: ChancePruner(optuna.pruners.NopPruner(), min_step=2)  # noqa: E731
    one = replay(curves, chance(), study_name="s", workers=1)
    assert [(o.state, o.epochs) for o in one.outcomes] == [("COMPLETE", 6), ("PRUNED", 2)]
    # On two workers trial 1 is done (t = 6 s) before trial 0 reports its first epoch (t = 10 s).
    two = replay(curves, chance(), study_name="s", workers=2)
    assert [(o.state, o.epochs) for o in two.outcomes] == [("COMPLETE", 6), ("COMPLETE", 6)]


def test_a_trial_that_failed_keeps_its_number_and_costs_its_epochs():
    curves = [Curve(0, tuple(LEADER), (1.0,) * 12), Curve(1, (), (), failed=True),
              Curve(2, (0.3, 0.2), (1.0, 1.0), failed=True), Curve(3, tuple(LEADER[:6]), (1.0,) * 6)]
    r = replay(curves, optuna.pruners.NopPruner(), study_name="s", workers=2)
    assert [(o.number, o.state, o.epochs) for o in r.outcomes] == [
        (0, "COMPLETE", 12), (1, "FAIL", 0), (2, "FAIL", 2), (3, "COMPLETE", 6)]
    assert r.best.number == 0
    # The pruner is asked after the last epoch too, as the objective asks it.
    last = replay([Curve(0, (0.6, 0.6, 0.4), (1.0,) * 3)], optuna.pruners.ThresholdPruner(lower=0.5), study_name="s")
    assert [(o.state, o.epochs, o.value) for o in last.outcomes] == [("PRUNED", 3, 0.6)] and last.best is None
    with pytest.raises(ValueError, match="numbered 0, 1, 2"):
        replay(curves[1:], optuna.pruners.NopPruner(), study_name="s")
