from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest

from search.optuna_sampling import enqueue_params, suggest
from search.space import SpaceError, list_spaces, load_space


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


BASE = """
model: baseline_cnn
params:
{params}
"""


def space_with(tmp_path: Path, params: str) -> Path:
    return write(tmp_path, BASE.format(params=textwrap.indent(textwrap.dedent(params), "  ")))


def test_shipped_spaces_load_and_default_to_the_seed_configuration():
    assert {"baseline_cnn", "resnet_unfreeze"} <= set(list_spaces())
    base = load_space("baseline_cnn").defaults()
    assert base["dropout"] == 0.25 and base["optimizer"] == "adam" and base["learning_rate"] == 8e-4
    assert base["batch_size"] == 64 and base["flip"] is True and "momentum" not in base
    resnet = load_space("resnet_unfreeze").defaults()
    assert (resnet["unfreeze"], resnet["optimizer"], resnet["learning_rate"]) == ("conv4", "sgd", 0.01)
    assert (resnet["dense1"], resnet["dense2"], resnet["unfreeze_batchnorm"]) == (1024, 256, True)
    assert resnet["momentum"] == 0.9  # active because the default optimizer is SGD


@pytest.mark.parametrize(
    "params, message",
    [
        ("dropout: {type: float, low: 0.5, high: 0.2, default: 0.3}",
         "parameter 'dropout': low <= high must hold, but got low=0.5, high=0.2; swap them"),
        ("learning_rate: {type: float, low: 0.0, high: 0.1, log: true, default: 0.01}",
         "parameter 'learning_rate': 'log: true' needs low > 0"),
        ("dropout: {type: gaussian, mean: 0.3}", "parameter 'dropout': unknown type 'gaussian'"),
        ("dropout: {type: float, low: 0.1, high: 0.5}", "give a 'default'"),
        ("dropout: {type: float, low: 0.1, high: 0.5, default: 0.9}", "default 0.9 is outside [0.1, 0.5]"),
        ("dropout: {type: float, low: 0.1, high: 0.5, default: 0.2, lo: 1}", "field 'lo': unknown field"),
        ("filters_per_layer: {type: int, low: 8, high: 64, default: 16}",
         "parameter 'filters_per_layer' is not accepted by the baseline_cnn builder"),
        ("momentum: {type: float, low: 0.8, high: 0.9, default: 0.9, when: {solver: sgd}}",
         "parameter 'momentum' has a condition on unknown parameter 'solver'"),
        ("optimizer: {type: categorical, choices: [adam, sgd], default: rmsprop}",
         "default 'rmsprop' is not one of the choices"),
        ("num_classes: 4", "parameter 'num_classes' is set by fer-search itself"),
        ("""\
         learning_rate: {type: float, log: true, depends_on: optimizer, ranges: {adam: {low: 1.0e-4, high: 1.0e-3}}}
         optimizer: {type: categorical, choices: [adam, sgd], default: adam}""",
         "parameter 'learning_rate' depends on 'optimizer'; list 'optimizer' before it"),
        ("""\
         optimizer: {type: categorical, choices: [adam, sgd], default: adam}
         learning_rate: {type: float, log: true, depends_on: optimizer, ranges: {adam: {low: 1.0e-4, high: 1.0e-3}}}""",
         "parameter 'learning_rate' has no range for optimizer=sgd"),
        # training settings: every value they can take must be one the objective accepts
        ("lr_schedule: {type: categorical, choices: [constant, linear], default: constant}",
         "parameter 'lr_schedule' can take 'linear', but it must be one of constant, cosine, plateau"),
        ("rotation: {type: float, low: 0.0, high: 0.8, default: 0.1}",
         "parameter 'rotation' can take 0.8, but it must be a fraction of a turn in [0, 0.5]"),
        ("batch_size: {type: categorical, choices: [0, 64], default: 64}",
         "parameter 'batch_size' can take 0, but it must be a whole number >= 1"),
        ("batch_size: {type: float, low: 16, high: 64, default: 32}",
         "parameter 'batch_size' can take 16.0, but it must be a whole number >= 1"),
        ("label_smoothing: 1.0", "parameter 'label_smoothing' can take 1.0, but it must be a number in [0, 1)"),
        ("flip: 'yes'", "parameter 'flip' can take 'yes', but it must be true or false"),
    ],
)
def test_bad_spaces_fail_naming_file_parameter_and_fix(tmp_path, params, message):
    path = space_with(tmp_path, params)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_unknown_space_lists_the_known_ones():
    known = list_spaces()
    assert {"baseline_cnn", "baseline_cnn_best", "resnet_unfreeze"} <= set(known)
    with pytest.raises(SpaceError) as err:
        load_space("nope")
    assert f"unknown space 'nope'; known spaces: {', '.join(known)}" in str(err.value)


def test_unknown_model_lists_the_registry(tmp_path):
    with pytest.raises(SpaceError, match=r"field 'model': unknown model 'vgg'; known models: baseline_cnn"):
        load_space(write(tmp_path, "model: vgg\nparams: {}\n"))


def test_an_unknown_label_map_is_refused_with_the_space(tmp_path):
    with pytest.raises(SpaceError, match=r"baseline_cnn.yaml with labels 'fer5': field 'labels': unknown label map"):
        load_space("baseline_cnn").with_settings(labels="fer5")
    path = write(tmp_path, "model: baseline_cnn\nlabels: {name: x, groups: {happy: [hapy]}}\nparams: {}\n")
    with pytest.raises(SpaceError, match=r"s.yaml: field 'labels': label map 'x': groups.happy lists unknown emotion"):
        load_space(path)


def test_unreadable_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "model: baseline_cnn\nparams: {dropout: [0.1\n")
    with pytest.raises(SpaceError, match=rf"{path}: not valid YAML"):
        load_space(path)


def test_budget_is_validated(tmp_path):
    path = write(tmp_path, "model: baseline_cnn\nbudget: {epochs: 2, min_epochs: 5}\n")
    with pytest.raises(SpaceError, match=r"min_epochs \(5\) must be <= epochs \(2\)"):
        load_space(path)
    path = write(tmp_path, "model: baseline_cnn\nbudget: {subset: 1.5}\n")
    with pytest.raises(SpaceError, match=r"field 'budget.subset'"):
        load_space(path)


def test_optuna_adapter_with_fixed_trial_follows_conditions():
    space = load_space("baseline_cnn")
    params = enqueue_params(space) | {"optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.85}
    config = suggest(optuna.trial.FixedTrial(params), space)
    assert config["optimizer"] == "sgd" and config["momentum"] == 0.85 and config["learning_rate"] == 0.05
    assert config["flip"] is True  # fixed parameters come along without being sampled

    adam = suggest(optuna.trial.FixedTrial(enqueue_params(space)), space)
    assert "momentum" not in adam and adam == space.defaults()


def test_conditional_range_is_what_optuna_samples_from():
    space = load_space("baseline_cnn")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    seen = {"adam": [], "sgd": []}
    for _ in range(40):
        trial = study.ask()
        config = suggest(trial, space)
        seen[config["optimizer"]].append(config["learning_rate"])
        study.tell(trial, 0.5)
    assert seen["adam"] and seen["sgd"]
    assert all(1e-4 <= v <= 3e-3 for v in seen["adam"]) and all(1e-3 <= v <= 1e-1 for v in seen["sgd"])
    assert max(seen["sgd"]) > 3e-3  # the SGD range really is a different one


def test_with_fixed_checks_the_value_against_the_range():
    space = load_space("baseline_cnn")
    fixed = space.with_fixed({"dropout": 0.3, "optimizer": "sgd"})
    assert fixed.defaults()["dropout"] == 0.3 and "dropout" not in fixed.searchable()
    assert fixed.defaults()["learning_rate"] == 1e-2  # the SGD range's default follows
    with pytest.raises(SpaceError, match=r"parameter 'dropout': 0.9 is outside its range \[0.15, 0.45\]"):
        space.with_fixed({"dropout": 0.9})
    with pytest.raises(SpaceError, match=r"unknown parameter 'dropuot'; known: dropout"):
        space.with_fixed({"dropuot": 0.3})
    with pytest.raises(SpaceError, match=r"'rmsprop' is not one of \['adam', 'sgd'\]"):
        space.with_fixed({"optimizer": "rmsprop"})


def test_with_fixed_on_an_exported_configuration_checks_training_settings(tmp_path):
    # every value of an exported configuration is fixed, so no range is left to check against; the
    # training settings' own rules still apply, before any data is loaded
    exported = load_space("baseline_cnn").fixed(load_space("baseline_cnn").defaults())
    assert exported.with_fixed({"lr_schedule": "cosine"}).defaults()["lr_schedule"] == "cosine"
    with pytest.raises(SpaceError, match=r"parameter 'lr_schedule' can take 'linear', but it must be one of "
                                         r"constant, cosine, plateau"):
        exported.with_fixed({"lr_schedule": "linear"})
    with pytest.raises(SpaceError, match=r"parameter 'batch_size' can take 0, but it must be a whole number >= 1"):
        exported.with_fixed({"batch_size": 0})


def test_exported_fixed_space_round_trips_through_the_loader(tmp_path):
    space = load_space("resnet_unfreeze")
    config = space.defaults() | {"dropout": 0.35}
    exported = space.fixed(config, source={"study": "s", "trial": 3})
    path = tmp_path / "best.yaml"
    path.write_text(exported.to_yaml())
    again = load_space(path)
    assert again.defaults() == config
    assert again.searchable() == {} and again.source == {"study": "s", "trial": 3}
    assert again.model == "resnet50_transfer" and again.budget == space.budget


def test_fingerprint_ignores_budget_but_not_params():
    space = load_space("baseline_cnn")
    assert space.with_settings(epochs=3).fingerprint() == space.fingerprint()
    assert space.with_fixed({"dropout": 0.3}).fingerprint() != space.fingerprint()
    assert space.with_settings(labels="fer4").fingerprint() != space.fingerprint()


def test_a_parameter_fixed_at_null_survives_every_copy_and_export(tmp_path):
    """`--set weights=null` (ResNet50 from scratch): None is the value, not a missing field."""
    from search.records import study_space

    space = load_space("resnet_unfreeze").with_fixed({"weights": None}).with_settings(subset=0.02, epochs=2)
    assert space.params["weights"].value is None
    study = optuna.create_study(study_name="s")
    study.set_user_attr("space", space.dump(mode="json"))  # what a study stores
    assert study_space(study).params["weights"].value is None
    exported = space.fixed(space.defaults())
    path = tmp_path / "best.yaml"
    path.write_text(exported.to_yaml())
    assert "weights: null" in path.read_text()
    assert load_space(path).defaults()["weights"] is None


def test_the_suites_small_space_is_baseline_cnn_narrowed_and_nothing_else(small_cnn):
    """What the suite's searches check holds for baseline_cnn only while the two differ in the widths alone."""
    shipped, small = load_space("baseline_cnn"), load_space(small_cnn)
    narrowed = {"base_filters", "dense_units"}
    assert (small.model, small.labels, small.budget) == (shipped.model, shipped.labels, shipped.budget)
    assert list(small.params) == list(shipped.params)
    assert {n: p for n, p in small.params.items() if n not in narrowed} == \
        {n: p for n, p in shipped.params.items() if n not in narrowed}
    for name in narrowed:
        assert max(small.params[name].choices) < min(shipped.params[name].choices)
