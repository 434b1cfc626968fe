"""search.train: final training on a small real slice, test metrics on PrivateTest only, resume."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from search import run, train
from search.data import load_fer2013
from search.space import load_space


def test_final_training_writes_everything_and_tests_on_privatetest_only(small_cnn, fer_slice, tmp_path):
    code = train.main(["--config", small_cnn, "--data", str(fer_slice), "--results", str(tmp_path),
                       "--epochs", "2", "--set", "batch_size=32"])
    assert code == 0
    out = tmp_path / "small_cnn" / "final"
    assert {p.name for p in out.iterdir()} == {"model.keras", "metrics.json", "config.yaml", "report.html"}
    metrics = json.loads((out / "metrics.json").read_text())
    data = load_fer2013(fer_slice)
    assert metrics["class_names"] == list(data.class_names)
    assert metrics["test"]["n"] == len(data.test) == 150 and metrics["val"]["n"] == len(data.val)

    # The saved model works without fer-search: raw 0..255 pixels in, one probability per class out,
    # and the reported test accuracy is its accuracy on the PrivateTest rows.
    model = keras.models.load_model(out / "model.keras")
    probs = model.predict(data.test.x.astype("float32"), verbose=0)
    assert probs.shape == (150, len(metrics["class_names"]))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    assert metrics["test"]["accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == data.test.y)))
    assert sum(c["support"] for c in metrics["per_class"].values()) == 150
    assert np.array(metrics["confusion_matrix"]).sum() == 150
    assert 0 < metrics["majority_baseline"] < 1 and len(metrics["history"]) == 2
    assert 0 < metrics["training_seconds"] < metrics["seconds"]  # one uninterrupted process holds its epochs
    from search.data import LABEL_MAPS

    fer4 = LABEL_MAPS["fer4"].lookup
    grouped = float(np.mean(fer4[probs.argmax(1)] == fer4[data.test.y]))
    assert metrics["test_collapsed_fer4"]["accuracy"] == pytest.approx(grouped)
    assert grouped >= metrics["test"]["accuracy"]  # grouping can only merge mistakes into hits

    page = (out / "report.html").read_text()
    assert "Confusion matrix on PrivateTest" in page and "Training curves" in page
    assert load_space(out / "config.yaml").defaults() == load_space(small_cnn).defaults() | {"batch_size": 32}


def test_exported_best_config_round_trips_into_final_training(small_cnn, fer_slice, tmp_path):
    db = f"sqlite:///{tmp_path}/optuna.db"
    assert run.main(["--space", small_cnn, "--data", str(fer_slice), "--results", str(tmp_path),
                     "--storage", db, "--trials", "1", "--epochs", "1", "--min-epochs", "1"]) == 0
    best = tmp_path / "small_cnn" / "best_config.yaml"
    assert train.main(["--config", str(best), "--data", str(fer_slice), "--results", str(tmp_path / "t"),
                       "--epochs", "1"]) == 0
    metrics = json.loads((tmp_path / "t" / "small_cnn" / "final" / "metrics.json").read_text())
    assert metrics["source"]["study"] == "small_cnn" and metrics["source"]["trial"] == 0
    assert metrics["config"] == load_space(best).defaults()

    # --set on an exported configuration: the trial's values no longer hold, and the outputs say so
    assert train.main(["--config", str(best), "--data", str(fer_slice), "--results", str(tmp_path / "s"),
                       "--epochs", "1", "--set", "lr_schedule=cosine"]) == 0
    out = tmp_path / "s" / "small_cnn" / "final"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"] == load_space(best).defaults() | {"lr_schedule": "cosine"}
    assert metrics["source"]["trial"] == 0 and metrics["source"]["set"] == {"lr_schedule": "cosine"}
    written = load_space(out / "config.yaml")
    assert written.source["set"] == {"lr_schedule": "cosine"}
    assert written.description.endswith("Then changed with --set: lr_schedule=cosine.")


class StopAfterSecondEpoch(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt


def test_interrupted_final_training_resumes_from_its_checkpoint(small_cnn, fer_slice, tmp_path):
    from search.objective import Objective

    space = load_space(small_cnn).with_fixed({"batch_size": 32})
    data = load_fer2013(fer_slice)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        Objective(data, space, log=None)(space.defaults(), epochs=4, checkpoint_dir=ckpt,
                                          callbacks=[StopAfterSecondEpoch()])
    state = json.loads((ckpt / "state.json").read_text())
    assert len(state["history"]) == 2

    lines: list[str] = []
    result = Objective(data, space, log=lines.append)(space.defaults(), epochs=4, checkpoint_dir=ckpt)
    assert lines[0].startswith("final | resuming after epoch 2") or "resuming after epoch 2" in lines[0]
    assert [line.split("|")[1].strip().split()[1] for line in lines[1:]] == ["3/4", "4/4"]
    assert len(result.history) == 4 and result.history[:2] == state["history"]


def test_a_resumed_run_trains_its_later_epochs_as_an_uninterrupted_run_does(fer_slice, tmp_path):
    # Epoch e's batches (order and augmentation) are a function of the seed and e alone, and the
    # checkpoint holds the model and optimizer state: the epochs after a resume are the same epochs.
    from search.objective import Objective

    path = tmp_path / "small.yaml"
    path.write_text("model: baseline_cnn\nparams: {batch_size: 32, base_filters: 8, shift: 0.1}\n")
    space = load_space(path)
    data = load_fer2013(fer_slice)
    whole = Objective(data, space, log=None)(space.defaults(), epochs=3)
    with pytest.raises(KeyboardInterrupt):
        Objective(data, space, log=None)(space.defaults(), epochs=3, checkpoint_dir=tmp_path / "ckpt",
                                         callbacks=[StopAfterSecondEpoch()])
    resumed = Objective(data, space, log=None)(space.defaults(), epochs=3, checkpoint_dir=tmp_path / "ckpt")
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [row[key] for row in resumed.history] == pytest.approx([row[key] for row in whole.history],
                                                                      rel=1e-5), key


def test_a_resumed_final_training_counts_the_epochs_of_the_interrupted_run(small_cnn, fer_slice, tmp_path):
    from search.objective import Objective

    space = load_space(small_cnn).with_fixed({"batch_size": 32})
    out = tmp_path / "final"
    with pytest.raises(KeyboardInterrupt):  # the first process: two epochs, then killed
        Objective(load_fer2013(fer_slice), space, log=None)(
            space.defaults(), epochs=3, label="final", checkpoint_dir=out / "checkpoint",
            callbacks=[StopAfterSecondEpoch()])
    earlier = sum(row["seconds"] for row in json.loads((out / "checkpoint" / "state.json").read_text())["history"])

    metrics = train.train_final(space, out, data_path=fer_slice, epochs=3)  # resumes: trains epoch 3 only
    assert len(metrics["history"]) == 3
    assert metrics["training_seconds"] == pytest.approx(earlier + metrics["history"][2]["seconds"])
    assert metrics["training_seconds"] > metrics["history"][2]["seconds"] > 0


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    assert train.main(["--config", str(tmp_path / "missing.yaml"), "--results", str(tmp_path)]) == 2
    assert f"space file {tmp_path / 'missing.yaml'} does not exist" in capsys.readouterr().err


def test_cosine_schedule_follows_its_curve_across_an_interruption(small_cnn, fer_slice, tmp_path):
    class StopAfterSecondEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    from search.objective import Objective

    space = load_space(small_cnn).with_fixed({"batch_size": 32, "lr_schedule": "cosine"})
    data = load_fer2013(fer_slice)
    base = space.defaults()["learning_rate"]
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        Objective(data, space, log=None)(space.defaults(), epochs=4, checkpoint_dir=ckpt,
                                          callbacks=[StopAfterSecondEpoch()])
    # The restored optimizer holds the decayed rate of epoch 2; the curve still starts from the config's.
    result = Objective(data, space, log=None)(space.defaults(), epochs=4, checkpoint_dir=ckpt)
    expected = [base * 0.5 * (1 + np.cos(np.pi * e / 4)) for e in range(4)]
    np.testing.assert_allclose([h["learning_rate"] for h in result.history], expected, rtol=1e-5)


def test_label_smoothing_trains_on_one_hot_labels_with_the_smoothed_loss(fer_slice, tmp_path):
    from search.objective import Objective

    path = tmp_path / "smooth.yaml"
    path.write_text("model: baseline_cnn\nparams: {batch_size: 32, label_smoothing: 0.1, base_filters: 8}\n")
    space = load_space(path)
    data = load_fer2013(fer_slice)
    objective = Objective(data, space, log=None)
    pipeline, val_ds = objective.datasets(space.defaults())
    _, labels = next(iter(pipeline.dataset))
    assert labels.shape == (32, data.num_classes)  # one-hot: the categorical loss needs them
    assert not pipeline.dataset.options().autotune.enabled and not val_ds.options().autotune.enabled

    result = objective(space.defaults(), epochs=1)
    loss = result.model.loss
    assert isinstance(loss, keras.losses.CategoricalCrossentropy) and loss.get_config()["label_smoothing"] == 0.1
    assert np.isfinite(result.history[0]["loss"]) and 0 <= result.value <= 1


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_a_trial_traces_its_training_step_once(fer_slice, tmp_path, label_smoothing):
    # Variables made inside the first step (the optimizer's, the compiled metrics') make TensorFlow
    # trace it a second time, every trial; the objective builds them beforehand.
    from search.objective import Objective

    path = tmp_path / "small.yaml"
    path.write_text(f"model: baseline_cnn\nparams: {{batch_size: 64, base_filters: 8, label_smoothing: {label_smoothing}}}\n")
    space = load_space(path)
    objective = Objective(load_fer2013(fer_slice), space, log=None)
    traced = []
    build = objective.build

    def counting_build(config):
        model = build(config)
        step = model.train_step
        model.train_step = lambda data: traced.append(1) or step(data)
        return model

    objective.build = counting_build
    result = objective(space.defaults(), epochs=2)
    assert len(traced) == 1 and 0 < result.history[0]["accuracy"] < 1

    # the metrics are built on a dummy prediction, then zeroed: training's first accuracy counts real batches only
    from search.objective import _build_compiled_metrics

    model = build(space.defaults())
    _build_compiled_metrics(model, objective.data.num_classes, one_hot=bool(label_smoothing))
    variables = [v for metric in model.metrics for v in metric.variables]
    assert variables and all(float(np.sum(v.numpy())) == 0 for v in variables)
