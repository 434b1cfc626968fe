"""--precision and --jit: mixed-precision trials still give float32 probabilities; nothing leaks."""
from __future__ import annotations

import keras
import numpy as np
import optuna
import pytest

from search import run
from search.cli import UsageError
from search.data import load_fer2013
from search.objective import Objective
from search.space import load_space


@pytest.fixture(scope="module")
def small(fer_slice):
    return load_fer2013(fer_slice)


@pytest.fixture(scope="module")
def tiny(small_cnn):
    """The narrow space, one epoch a trial, batch 32."""
    return load_space(small_cnn).with_settings(epochs=1, min_epochs=1).with_fixed({"batch_size": 32})


def test_mixed_bfloat16_trial_trains_in_bfloat16_and_gives_float32_probabilities(small, tiny):
    objective = Objective(small, tiny, log=None, precision="mixed_bfloat16")
    result = objective(tiny.defaults())
    model = result.model
    assert model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert model.get_layer("block1_conv1").variable_dtype == "float32"  # weights stay float32
    probs = model.predict(small.val.x[:16].astype("float32"), verbose=0)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)  # a bfloat16 softmax would be off by ~1e-2
    assert 0 <= result.value <= 1 and np.isfinite(result.metrics["val_loss"])
    # The policy is the objective's alone: models built after it are float32 again.
    assert keras.mixed_precision.global_policy().name == "float32"
    assert keras.layers.Dense(2).compute_dtype == "float32"


def test_mixed_float16_without_a_gpu_is_refused_with_the_fix(small, tiny):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible: mixed_float16 is allowed")
    with pytest.raises(UsageError, match="mixed_float16 needs a GPU.*Use mixed_bfloat16"):
        Objective(small, tiny, log=None, precision="mixed_float16")


def test_jit_sets_xla_on_the_compiled_model_and_auto_leaves_keras_choice(small, tiny):
    config = tiny.defaults()
    assert Objective(small, tiny, log=None, jit=True).build(config).jit_compile is True
    assert Objective(small, tiny, log=None, jit=False).build(config).jit_compile is False
    assert Objective(small, tiny, log=None).build(config).jit_compile is False  # Keras: no XLA on CPUs


def test_unknown_precision_names_the_choices(small, tiny):
    with pytest.raises(ValueError, match="float64.*float32, mixed_bfloat16, mixed_float16"):
        Objective(small, tiny, log=None, precision="float64")


def test_search_runs_under_mixed_bfloat16(small_cnn, fer_slice, tmp_path):
    db = f"sqlite:///{tmp_path}/optuna.db"
    assert run.main(["--space", small_cnn, "--data", str(fer_slice), "--results", str(tmp_path), "--storage", db,
                     "--trials", "1", "--epochs", "1", "--min-epochs", "1", "--set", "batch_size=32",
                     "--precision", "mixed_bfloat16"]) == 0
    trial = optuna.load_study(study_name="small_cnn", storage=db).trials[0]
    assert trial.state.name == "COMPLETE" and 0 < trial.value <= 1


def test_precision_with_the_kerastuner_driver_is_refused(fer_slice, tmp_path, capsys):
    code = run.main(["--space", "baseline_cnn", "--data", str(fer_slice), "--results", str(tmp_path),
                     "--driver", "kerastuner", "--precision", "mixed_bfloat16"])
    assert code == 2 and "--precision and --jit apply to the optuna driver only" in capsys.readouterr().err
