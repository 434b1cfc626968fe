"""The KerasTuner driver: its sampling adapter with fixed values, its oracles without training, and
searches through search.run on a small real FER2013 slice."""
from __future__ import annotations

import keras_tuner as kt
import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from search import records, run
from search.kerastuner_driver import TrialTable, make_oracle, optuna_params
from search.kerastuner_sampling import config_from_hp, declare
from search.optuna_driver import make_pruner, make_sampler, open_study
from search.optuna_sampling import suggest
from search.run import configure_space
from search.space import load_space

QUICK = ["--epochs", "2", "--min-epochs", "1", "--set", "batch_size=32"]


def load(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


# -- the adapter ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["baseline_cnn", "resnet_unfreeze"])
def test_a_fresh_hyperparameters_holds_the_default_point(name):
    space = load_space(name)
    assert config_from_hp(kt.HyperParameters(), space) == space.defaults()


def test_every_parameter_is_declared_with_its_conditions():
    hp = kt.HyperParameters()
    declare(hp, load_space("baseline_cnn"))
    declared = {h.name: h for h in hp.space}
    assert isinstance(declared["flip"], kt.engine.hyperparameters.Fixed)
    assert isinstance(declared["optimizer"], kt.engine.hyperparameters.Choice)
    assert declared["dropout"].step == 0.05 and declared["dropout"].sampling == "linear"
    sgd = declared["learning_rate@sgd"]
    assert (sgd.min_value, sgd.max_value, sgd.sampling) == (1e-3, 1e-1, "log")
    assert [(c.name, c.values) for c in sgd.conditions] == [("optimizer", ["sgd"])]
    assert [(c.name, c.values) for c in declared["momentum"].conditions] == [("optimizer", ["sgd"])]
    # inactive parameters are declared but hold no value, as KerasTuner requires
    assert hp.values["learning_rate@adam"] == 8e-4 and "learning_rate@sgd" not in hp.values
    assert "momentum" not in hp.values


def test_fixed_values_pick_the_branch_and_come_back_under_plain_names():
    space = load_space("baseline_cnn")
    hp = kt.HyperParameters()
    hp.Fixed("optimizer", "sgd")
    hp.Fixed("learning_rate@sgd", 0.05)
    hp.Fixed("momentum", 0.85)
    hp.Fixed("base_filters", 32)
    config = config_from_hp(hp, space)
    assert config == space.defaults() | {"optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.85,
                                         "base_filters": 32}
    params, distributions = optuna_params(space, config)
    assert suggest(optuna.trial.FixedTrial(params), space) == config  # the Optuna adapter agrees
    assert distributions["learning_rate"] == FloatDistribution(1e-3, 1e-1, log=True)
    assert "flip" not in params  # fixed parameters are config, not Optuna parameters


def test_the_top_of_a_stepped_range_is_reachable_and_values_are_snapped_to_the_grid():
    space = load_space("baseline_cnn")
    hp = kt.HyperParameters()
    declare(hp, space)
    dense_dropout = next(h for h in hp.space if h.name == "dense_dropout")  # [0.15, 0.5] in steps of 0.05
    top = dense_dropout.prob_to_value(0.9999)
    assert top == pytest.approx(0.5)  # plain KerasTuner floor-divides 0.35 / 0.05 to 6 and never reaches 0.5
    hp.values["dense_dropout"] = top
    hp.values["dropout"] = 0.15 + 3 * 0.05  # 0.30000000000000004
    config = config_from_hp(hp, space)
    assert config["dense_dropout"] == 0.5 and config["dropout"] == 0.3


def test_conditions_on_two_parents_and_values_kerastuner_cannot_hold(tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump({
        "model": "baseline_cnn",
        "params": {
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"], "default": "adam"},
            "batch_size": {"type": "categorical", "choices": [32, 64], "default": 64},
            # two top-level parents: hp.conditional_scope cannot nest these
            "momentum": {"type": "float", "low": 0.8, "high": 0.95, "default": 0.9,
                         "when": {"optimizer": "sgd", "batch_size": 32}},
            "class_weights": {"type": "categorical", "choices": [False, True], "default": False},
            "dense_units": {"type": "categorical", "choices": [256, 512.0], "default": 256},
        },
    }, sort_keys=False))
    space = load_space(path)
    assert config_from_hp(kt.HyperParameters(), space) == space.defaults()
    hp = kt.HyperParameters()
    hp.Fixed("optimizer", "sgd")
    assert "momentum" not in config_from_hp(hp, space)  # batch_size is still 64
    hp = kt.HyperParameters()
    hp.Fixed("optimizer", "sgd")
    hp.Fixed("batch_size", 32)
    hp.Fixed("class_weights", "true")  # held as JSON text: hp.Choice would turn bools into 0 and 1
    hp.Fixed("dense_units", "512.0")  # mixed int and float choices: JSON text too
    config = config_from_hp(hp, space)
    assert config["momentum"] == 0.9 and config["class_weights"] is True and config["dense_units"] == 512.0
    assert type(config["dense_units"]) is float


# -- the oracles ----------------------------------------------------------------------------------


def _first_values(oracle: kt.Oracle, space) -> dict:
    hp = kt.HyperParameters()
    declare(hp, space)
    oracle.update_space(hp)
    return oracle.populate_space("0")["values"]


@pytest.mark.parametrize("kind", ["random", "bayesian", "hyperband"])
def test_every_tuner_starts_at_the_default_point(kind):
    space = load_space("baseline_cnn")
    values = _first_values(make_oracle(kind, space, max_trials=5, seed=0), space)
    hp = kt.HyperParameters()
    declare(hp, space)
    assert {k: v for k, v in values.items() if not k.startswith("tuner/")} == hp.values


def test_hyperband_never_ranks_on_fewer_than_min_epochs():
    space = load_space("baseline_cnn").with_settings(epochs=9, min_epochs=1)
    assert _first_values(make_oracle("hyperband", space, max_trials=5, seed=0), space)["tuner/epochs"] == 1
    space = space.with_settings(min_epochs=3)
    assert _first_values(make_oracle("hyperband", space, max_trials=5, seed=0), space)["tuner/epochs"] == 3


# -- searches on the real slice -------------------------------------------------------------------


def test_search_completes_records_and_resumes(small_cnn, fer_slice, tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/optuna.db"
    common = ["--space", small_cnn, "--driver", "kerastuner", "--tuner", "random", "--data", str(fer_slice),
              "--results", str(tmp_path), "--storage", db, *QUICK]
    assert run.main([*common, "--trials", "3"]) == 0
    study = load(db, "small_cnn-kerastuner")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    first = study.trials[0]
    defaults = load_space(small_cnn).defaults()
    assert first.user_attrs["default_point"] is True and first.user_attrs["config"]["batch_size"] == 32
    assert first.params == {k: v for k, v in defaults.items() if k not in ("flip", "batch_size")}
    assert len(first.user_attrs["history"]) == 2 and first.user_attrs["metrics"]["epochs_run"] == 2
    assert first.intermediate_values[2] == first.value and first.duration.total_seconds() > 0
    assert (tmp_path / "small_cnn-kerastuner" / "kerastuner" / "oracle.json").exists()
    out = capsys.readouterr().out
    assert "trial 0 | epoch   1/2" in out and "trial 2 complete: val_acc" in out
    assert "Search: Running Trial" not in out  # KerasTuner's own display stays quiet

    assert run.main([*common, "--trials", "5"]) == 0  # the same command resumes the search to 5
    study = load(db, "small_cnn-kerastuner")
    project = tmp_path / "small_cnn-kerastuner" / "kerastuner"
    table = TrialTable(study, configure_space(run.build_parser().parse_args(common)),
                       study.trials[0].user_attrs["kerastuner_project"], "random")
    assert table.sync(project) == []  # a run after this one would record nothing twice
    table = records.trials_frame(study)
    assert list(table["number"]) == [0, 1, 2, 3, 4] and set(table["driver"]) == {"kerastuner"}
    assert sorted(t.user_attrs["kerastuner_trial_id"] for t in study.trials) == ["0", "1", "2", "3", "4"]
    assert table["is_default"].sum() == 1 and table["value"].between(0, 1).all()
    assert len(table.drop_duplicates(subset=[c for c in table if c.startswith("params_")])) == 5
    assert len((tmp_path / "small_cnn-kerastuner" / "trials.csv").read_text().splitlines()) == 1 + 5
    exported = load_space(tmp_path / "small_cnn-kerastuner" / "best_config.yaml")
    assert exported.source["driver"] == "kerastuner" and exported.searchable() == {}


def test_hyperband_trains_each_trial_for_the_epochs_it_assigns(small_cnn, fer_slice, tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/optuna.db"
    # at most 3 epochs from 1: three 1-epoch trials, then the best of them promoted to 3 epochs
    assert run.main(["--space", small_cnn, "--driver", "kerastuner", "--data", str(fer_slice),
                     "--results", str(tmp_path), "--storage", db, "--trials", "4", "--epochs", "3",
                     "--min-epochs", "1", "--subset", "0.5", "--set", "batch_size=32"]) == 0
    study = load(db, "small_cnn-kerastuner")
    assert [t.user_attrs["metrics"]["epochs_run"] for t in study.trials] == [1, 1, 1, 3]
    promoted = study.trials[3]
    parent = promoted.user_attrs["hyperband"]["trial_id"]
    best_first = max(study.trials[:3], key=lambda t: t.value)
    assert best_first.user_attrs["kerastuner_trial_id"] == parent
    assert promoted.user_attrs["config"] == best_first.user_attrs["config"]
    assert len(promoted.user_attrs["history"]) == 3 and sorted(promoted.intermediate_values) == [1, 2, 3]
    assert "promotes trial" in capsys.readouterr().out


def test_a_failed_trial_carries_its_reason_and_fresh_starts_over(fer_slice, tmp_path, capsys):
    space = tmp_path / "explode.yaml"
    space.write_text(yaml.safe_dump({
        "model": "baseline_cnn",
        "params": {
            "optimizer": "adam",  # a step of ~1e12 on every weight: the next forward pass overflows
            "learning_rate": {"type": "categorical", "choices": [1.0e12, 1.0e-3], "default": 1.0e12},
            "batch_size": 32,
            "base_filters": 8,
            "dense_units": 64,
        },
    }))
    db = f"sqlite:///{tmp_path}/optuna.db"
    base = ["--space", str(space), "--driver", "kerastuner", "--tuner", "random", "--data", str(fer_slice),
            "--results", str(tmp_path), "--storage", db, "--epochs", "1", "--min-epochs", "1"]
    assert run.main([*base, "--trials", "2", "--max-failures", "5"]) == 0
    study = load(db, "explode-kerastuner")
    failed, done = study.trials
    assert failed.state == TrialState.FAIL and failed.value is None and failed.params["learning_rate"] == 1e12
    assert failed.user_attrs["fail_reason"].startswith("TrialFailed: the training loss became")
    assert done.state == TrialState.COMPLETE  # the search went on
    assert "trial 0 fail: TrialFailed: the training loss became" in capsys.readouterr().out

    assert run.main([*base, "--trials", "1", "--fresh"]) == 0
    study = load(db, "explode-kerastuner")
    assert len(study.trials) == 1 and study.trials[0].user_attrs["kerastuner_trial_id"] == "0"
    assert study.trials[0].user_attrs["kerastuner_project"] != failed.user_attrs["kerastuner_project"]

    assert run.main([*base, "--trials", "9", "--timeout", "0.001"]) == 0
    assert "timeout reached after 0 trials" in capsys.readouterr().out
    assert len(load(db, "explode-kerastuner").trials) == 1

    all_fail = tmp_path / "all_fail.yaml"
    all_fail.write_text(space.read_text().replace("0.001", "1.0e+11"))
    assert run.main([*base[:1], str(all_fail), *base[2:], "--trials", "5", "--max-failures", "2"]) == 2
    err = capsys.readouterr().err
    assert "2 trials in a row failed; the last one said: TrialFailed: the training loss became" in err
    assert len(load(db, "all_fail-kerastuner").trials) == 2  # the failures were recorded before stopping


def test_both_drivers_share_one_study(small_cnn, fer_slice, tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/optuna.db"
    space = load_space(small_cnn).with_settings(epochs=1, min_epochs=1).with_fixed({"batch_size": 32})
    open_study(space, study_name="shared", storage=db, sampler=make_sampler("random", 0),
               pruner=make_pruner("none", space))  # as `--driver optuna` creates it: default point WAITING
    common = ["--space", small_cnn, "--data", str(fer_slice), "--results", str(tmp_path), "--storage", db,
              "--study-name", "shared", "--epochs", "1", "--min-epochs", "1", "--set", "batch_size=32"]
    assert run.main([*common, "--driver", "kerastuner", "--tuner", "random", "--trials", "1"]) == 0
    study = load(db, "shared")
    assert [t.state for t in study.trials] == [TrialState.WAITING, TrialState.COMPLETE]
    assert study.trials[0].user_attrs == {"default_point": True}  # the Optuna driver's, untouched

    assert run.main([*common, "--driver", "optuna", "--sampler", "random", "--pruner", "none", "--trials", "2"]) == 0
    study = load(db, "shared")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert [t.user_attrs["driver"] for t in study.trials] == ["optuna", "kerastuner"]
    assert all(t.user_attrs["default_point"] for t in study.trials)  # each driver ran it once
    assert set(records.trials_frame(study)["driver"]) == {"optuna", "kerastuner"}
    capsys.readouterr()

    assert run.main([*common, "--driver", "kerastuner", "--tuner", "random", "--trials", "1", "--fresh"]) == 2
    assert "also holds 1 trial(s) of another driver" in capsys.readouterr().err
    assert run.main([*common, "--driver", "kerastuner", "--tuner", "bayesian", "--trials", "2"]) == 2
    assert "was started with --tuner random; pass --tuner random to resume it" in capsys.readouterr().err
    assert len(load(db, "shared").trials) == 2  # refused before anything ran or was deleted
