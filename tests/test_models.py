"""Tests of the Keras model builders (fer_models)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import fer_models
from fer_models import resnet_transfer
from fer_models.baseline_cnn import build_baseline_cnn
from fer_models.resnet_transfer import (
    IMAGENET_NOTOP_FILE,
    UNFREEZE_CHOICES,
    WeightsUnavailableError,
    build_resnet50_transfer,
    trainable_base_layers,
)

REPO = Path(__file__).resolve().parents[1]
# Small and offline: the fast ResNet tests never touch ImageNet weights.
TINY_RESNET = {"weights": None, "input_size": 32, "dense1": 16, "dense2": 8}


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    keras.backend.clear_session()
    yield


def raw_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 48, 48, 1)).astype("float32")


def raw_labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 7, size=n)


# --- registry -----------------------------------------------------------------------------


def test_registry_lists_models_without_importing_tensorflow():
    code = (
        "import sys, fer_models; names = sorted(fer_models.MODELS); "
        "fer_models.UnknownModelError; "
        "print(names, 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert out.strip() == "['baseline_cnn', 'resnet50_transfer'] False False"


def test_get_builder_returns_the_builders():
    assert fer_models.get_builder("baseline_cnn") is build_baseline_cnn
    assert fer_models.MODELS["resnet50_transfer"] is build_resnet50_transfer
    assert dict(fer_models.MODELS) == {
        "baseline_cnn": build_baseline_cnn,
        "resnet50_transfer": build_resnet50_transfer,
    }


def test_unknown_model_lists_known_names():
    with pytest.raises(fer_models.UnknownModelError) as info:
        fer_models.get_builder("resnet18")
    assert isinstance(info.value, KeyError)
    assert str(info.value) == (
        "unknown model 'resnet18'; known models: baseline_cnn, resnet50_transfer"
    )
    assert "resnet18" not in fer_models.MODELS
    with pytest.raises(fer_models.UnknownModelError):
        fer_models.builder_defaults("resnet18")


def test_builder_defaults():
    baseline = fer_models.builder_defaults("baseline_cnn")
    assert baseline == {
        "num_classes": 7, "base_filters": 16, "conv_blocks": 4, "dropout": 0.25,
        "conv_batchnorm": False, "dense_units": 512, "dense_layers": 3, "dense_dropout": 0.25, "optimizer": "adam",
        "learning_rate": 8e-4, "momentum": 0.9, "weight_decay": 0.0,
        "input_shape": (48, 48, 1), "seed": None,
    }  # fmt: skip
    resnet = fer_models.builder_defaults("resnet50_transfer")
    assert resnet["weights"] == "imagenet"
    assert resnet["unfreeze"] == "conv4"
    assert (resnet["dense1"], resnet["dense2"], resnet["input_size"]) == (1024, 256, 96)
    assert (resnet["optimizer"], resnet["learning_rate"]) == ("sgd", 0.01)


# --- baseline CNN -------------------------------------------------------------------------


def layer_kinds(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def learning_rate(model: keras.Model) -> float:
    return float(np.asarray(model.optimizer.learning_rate))


def test_baseline_defaults_reproduce_the_seed_recipe():
    model = build_baseline_cnn()

    block = ["Conv2D", "Conv2D", "BatchNormalization", "MaxPooling2D", "Dropout"]
    head = ["Dense", "Dropout"] * 3 + ["Dense"]
    assert layer_kinds(model) == ["InputLayer", "Rescaling"] + block * 4 + ["Flatten"] + head
    assert model.layers[1].scale == pytest.approx(1 / 255)

    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [16, 16, 32, 32, 64, 64, 128, 128]
    assert {(c.kernel_size, c.padding, c.activation.__name__) for c in convs} == {
        ((3, 3), "same", "relu")
    }
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert {p.pool_size for p in pools} == {(2, 2)}
    assert {d.rate for d in model.layers if isinstance(d, keras.layers.Dropout)} == {0.25}

    denses = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in denses] == [512, 256, 128, 7]
    assert [d.activation.__name__ for d in denses] == ["relu"] * 3 + ["softmax"]

    assert model.input_shape == (None, 48, 48, 1)
    assert model.output_shape == (None, 7)
    assert type(model.optimizer) is keras.optimizers.Adam
    assert learning_rate(model) == pytest.approx(8e-4)
    assert model.loss == "sparse_categorical_crossentropy"


def test_baseline_knobs_change_the_architecture():
    model = build_baseline_cnn(
        conv_blocks=2, base_filters=8, dropout=0.4, dense_units=40, dense_layers=3,
        dense_dropout=0.1, num_classes=5,
    )  # fmt: skip
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [8, 8, 16, 16]
    denses = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in denses] == [40, 20, 16, 5]  # halving stops at 16
    rates = [d.rate for d in model.layers if isinstance(d, keras.layers.Dropout)]
    assert rates == [0.4, 0.4, 0.1, 0.1, 0.1]

    no_head = build_baseline_cnn(dense_layers=0, conv_blocks=5)  # 5 poolings: 48 -> 1
    assert layer_kinds(no_head)[-2:] == ["Flatten", "Dense"]

    every = build_baseline_cnn(conv_blocks=2, conv_batchnorm=True)
    block = ["Conv2D", "BatchNormalization", "Conv2D", "BatchNormalization", "MaxPooling2D", "Dropout"]
    assert layer_kinds(every)[2:14] == block * 2


def test_optimizer_choices():
    sgd = build_baseline_cnn(optimizer="sgd", learning_rate=0.02, momentum=0.8)
    assert type(sgd.optimizer) is keras.optimizers.SGD
    assert sgd.optimizer.nesterov is True
    assert float(sgd.optimizer.momentum) == pytest.approx(0.8)
    assert learning_rate(sgd) == pytest.approx(0.02)

    adamw = build_baseline_cnn(weight_decay=1e-4)
    assert type(adamw.optimizer) is keras.optimizers.AdamW
    assert adamw.optimizer.weight_decay == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"optimizer": "adam", "learning_rate": 1e-3},
        {"optimizer": "adam", "learning_rate": 1e-3, "weight_decay": 1e-2},
        {"optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9},
        {"optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 1e-2},
        {"optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.0},  # Keras's own step, without the all-reduce
    ],
    ids=["adam", "adamw", "sgd-nesterov", "sgd-nesterov-decay", "sgd-plain"],
)
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_fused_update_does_keras_arithmetic(kwargs, traced):
    from fer_models._common import make_optimizer

    rng = np.random.default_rng(0)
    start = [rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(4,)).astype("float32")]
    grads = [[rng.normal(size=w.shape).astype("float32") for w in start] for _ in range(5)]
    options = {"momentum": 0.9, "weight_decay": 0.0} | {k: v for k, v in kwargs.items() if k != "optimizer"}

    def train(optimizer):
        variables = [keras.Variable(w) for w in start]
        if traced:  # all five updates in one graph: the scalars they share must not carry over between them
            optimizer.build(variables)
            tf.function(lambda: [optimizer.apply(step, variables) for step in grads])()
        else:
            for step in grads:
                optimizer.apply(step, variables)
        return [v.numpy() for v in variables]

    fused = make_optimizer(kwargs["optimizer"], **options)
    plain = type(fused).from_config(fused.get_config())  # a fresh Keras optimizer, its own update step
    assert "update_step" in vars(fused) and "update_step" not in vars(plain)
    moved = train(fused)
    for got, want, before in zip(moved, train(plain), start):
        assert not np.allclose(got, before)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_fused_update_makes_the_shared_scalars_once(name):
    # A traced update of every variable makes the step, the powers and the rate once, not per variable.
    from fer_models._common import make_optimizer

    def traced_ops(n_variables):
        optimizer = make_optimizer(name, learning_rate=1e-3, momentum=0.9, weight_decay=0.0)
        variables = [keras.Variable(np.ones((3,), "float32")) for _ in range(n_variables)]
        optimizer.build(variables)
        grads = [tf.ones((3,)) for _ in variables]
        graph = tf.function(lambda: optimizer.apply(grads, variables)).get_concrete_function().graph
        return Counter(op.type for op in graph.get_operations())

    few, many = traced_ops(2), traced_ops(12)
    kernel = "ResourceApplyAdam" if name == "adam" else "ResourceApplyKerasMomentum"
    assert many[kernel] == 12 and few[kernel] == 2
    assert many["Pow"] == (2 if name == "adam" else 0)  # the two beta powers, once for all 12
    # 10 more variables add, each: its kernel, the handles it takes (variable and slots) and its gradient
    # (a captured constant here); no Pow, Cast or read of the step, nor the all-reduce's Identity
    slots = 2 if name == "adam" else 1
    assert many - few == Counter({kernel: 10, "Placeholder": 10 * (1 + slots), "Const": 10})
    assert not few - many


def _custom_gradients() -> int:
    from tensorflow.python.framework import ops

    return sum(name.startswith("CustomGradient") for name in ops._gradient_registry.list())


@pytest.mark.parametrize("name, momentum", [("adam", 0.9), ("sgd", 0.9), ("sgd", 0.0)])
def test_traced_update_leaves_nothing_in_tensorflows_registry(name, momentum):
    # Keras's all-reduce of the gradients registers a gradient function for every graph it is traced in,
    # holding the graph and the variables it captures for the life of the process: a search leaked a model a
    # trial. Outside a distribution strategy there is nothing to sum over, and the update skips it.
    from fer_models._common import make_optimizer

    optimizer = make_optimizer(name, learning_rate=1e-3, momentum=momentum, weight_decay=0.0)
    variables = [keras.Variable(np.ones((3,), "float32"))]
    optimizer.build(variables)
    before = _custom_gradients()
    tf.function(lambda: optimizer.apply([tf.ones((3,))], variables)).get_concrete_function()
    assert _custom_gradients() == before


def test_fused_update_under_a_distribution_strategy_sums_over_replicas():
    # Inside a strategy, the update is Keras's: gradients all-reduced over the replicas, then applied.
    from fer_models._common import make_optimizer

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    updates = []
    for fused in (True, False):
        with strategy.scope():
            optimizer = make_optimizer("sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.0)
            if not fused:
                optimizer = type(optimizer).from_config(optimizer.get_config())
            variables = [keras.Variable(np.ones((3,), "float32"))]
            optimizer.build(variables)
        before = _custom_gradients()
        tf.function(lambda: strategy.run(lambda: optimizer.apply([tf.constant([1.0, 2.0, 3.0])], variables)))()
        assert _custom_gradients() > before  # Keras's all-reduce ran
        updates.append(variables[0].numpy())
    np.testing.assert_allclose(updates[0], 1 - 0.1 * np.array([1.0, 2.0, 3.0]) * (1 + 0.9), rtol=1e-6)
    np.testing.assert_allclose(updates[0], updates[1], rtol=1e-6)


def _batchnorm_pair(shape=(None, 5, 5, 3), **kwargs):
    """(fused, plain) BatchNormalization layers built alike, with the same non-trivial weights."""
    from fer_models._batchnorm import fuse_batchnorm

    rng = np.random.default_rng(1)
    fused = fuse_batchnorm(keras.layers.BatchNormalization(**kwargs))
    plain = keras.layers.BatchNormalization(**kwargs)
    assert "call" in vars(fused) and "call" not in vars(plain)
    call = vars(fused)["call"]
    assert fuse_batchnorm(fused) is fused and vars(fused)["call"] is call  # fusing again changes nothing
    for layer in (fused, plain):
        layer.build(shape)
    values = [rng.normal(1.0, 0.3, size=w.shape).astype("float32") for w in plain.weights]
    values = [np.abs(v) if w.name == "moving_variance" else v for v, w in zip(values, plain.weights)]
    for layer in (fused, plain):
        layer.set_weights(values)
    return fused, plain


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
@pytest.mark.parametrize("kwargs", [{}, {"center": False, "scale": False, "momentum": 0.9}], ids=["default", "bare"])
def test_fused_batchnorm_does_keras_arithmetic(kwargs, traced):
    # Outputs, gradients and moving statistics over three training steps, then inference, as Keras's own.
    fused, plain = _batchnorm_pair(**kwargs)
    batches = [tf.constant(np.random.default_rng(i).normal(2.0, 3.0, size=(8, 5, 5, 3)).astype("float32"))
               for i in range(3)]
    upstream = tf.constant(np.random.default_rng(9).normal(size=(8, 5, 5, 3)).astype("float32"))

    def step(layer, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * upstream)  # any gradient from above: not the sum, whose is 0 for gamma
        return [y, *tape.gradient(loss, [x, *layer.trainable_variables])]

    def train(layer):
        run = tf.function(step) if traced else step
        return [[t.numpy() for t in run(layer, x)] for x in batches]

    got, want = train(fused), train(plain)
    for got_step, want_step in zip(got, want):
        assert len(got_step) == len(want_step) == (4 if not kwargs else 2)
        for a, b in zip(got_step, want_step):
            assert np.isfinite(a).all()  # assert_allclose would take NaN for NaN
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(fused.weights, plain.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(plain.moving_mean.numpy(), _batchnorm_pair(**kwargs)[1].moving_mean.numpy())
    np.testing.assert_allclose(fused(batches[0], training=False), plain(batches[0], training=False), rtol=1e-5, atol=1e-5)


def test_fused_batchnorm_under_mixed_bfloat16_matches_keras():
    # bfloat16 in and out, the statistics in float32, as Keras's layer does.
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        fused, plain = _batchnorm_pair()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = tf.cast(np.random.default_rng(0).normal(2.0, 3.0, size=(8, 5, 5, 3)), tf.bfloat16)
    for training in (True, False):
        got, want = fused(x, training=training), plain(x, training=training)
        assert got.dtype == want.dtype == tf.bfloat16
        np.testing.assert_allclose(tf.cast(got, tf.float32), tf.cast(want, tf.float32), atol=0.02)
    assert fused.moving_variance.dtype == "float32"
    for a, b in zip(fused.weights, plain.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_a_frozen_fused_batchnorm_normalises_with_its_moving_statistics():
    # Keras's arithmetic, the gradient to the layer below included, and no update of the statistics.
    fused, plain = _batchnorm_pair()
    fused.trainable = plain.trainable = False
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 5, 5, 3)).astype("float32"))
    upstream = tf.constant(np.random.default_rng(1).normal(size=(4, 5, 5, 3)).astype("float32"))

    def forward_and_gradient(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        return y, tape.gradient(loss, x)

    graph = tf.function(lambda: fused(x, training=True)).get_concrete_function().graph
    assert "FusedBatchNormV3" in {op.type for op in graph.get_operations()}
    for a, b in zip(forward_and_gradient(fused), forward_and_gradient(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(fused.weights, plain.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_fused_batchnorm_keeps_keras_call_where_the_kernel_does_not_fit():
    # A 2-D input and an epsilon below the kernel's floor: Keras's own ops, Keras's results.
    for shape, kwargs in (((None, 3), {}), ((None, 5, 5, 3), {"epsilon": 1e-6})):
        fused, plain = _batchnorm_pair(shape, **kwargs)
        x = tf.constant(np.random.default_rng(1).normal(size=(6, *shape[1:])).astype("float32"))
        graph = tf.function(lambda v, layer=fused: layer(v, training=True)).get_concrete_function(x).graph
        assert "FusedBatchNormV3" not in {op.type for op in graph.get_operations()}
        np.testing.assert_allclose(fused(x, training=True), plain(x, training=True), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fused.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=1e-6)


@pytest.mark.parametrize("conv_batchnorm", [False, True])
def test_the_baseline_cnn_trains_its_batchnorm_with_the_fused_kernel(conv_batchnorm):
    # One FusedBatchNormV3 and one gradient kernel a layer in the traced step, and none of Keras's moments.
    model = build_baseline_cnn(seed=0, base_filters=4, dense_units=16, conv_blocks=2, conv_batchnorm=conv_batchnorm)
    x, y = tf.constant(raw_images(8)), tf.constant(raw_labels(8))
    model.optimizer.build(model.trainable_variables)
    graph = tf.function(model.train_step).get_concrete_function((x, y)).graph
    ops = Counter(op.type for op in graph.get_operations())
    layers_bn = 4 if conv_batchnorm else 2
    assert ops["FusedBatchNormV3"] == ops["FusedBatchNormGradV3"] == layers_bn
    assert ops["SquaredDifference"] == ops["Rsqrt"] == 0


def test_every_resnet_batchnorm_is_fused():
    model = build_resnet50_transfer(**TINY_RESNET, unfreeze="conv5", unfreeze_batchnorm=False)
    norms = [layer for layer in model.get_layer(resnet_transfer.BASE_LAYER_NAME).layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 53 and all("call" in vars(layer) for layer in norms)


def test_a_saved_model_loads_without_fer_models(tmp_path):
    # The fused optimizer step and BatchNormalization are bound to plain Keras objects, so the file names
    # Keras's Adam and BatchNormalization, not ours.
    model = build_baseline_cnn(seed=0, base_filters=4, dense_units=16)
    model.fit(raw_images(16), raw_labels(16), epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    code = (
        "import sys, keras; m = keras.models.load_model(sys.argv[1]); "
        "assert 'fer_models' not in sys.modules; print(type(m.optimizer).__name__, int(m.optimizer.iterations))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["Adam", "2"]


def test_seed_makes_initial_weights_reproducible():
    def first_kernel(seed):
        keras.backend.clear_session()
        model = build_baseline_cnn(seed=seed, conv_blocks=1, dense_layers=0)
        return model.get_layer("block1_conv1").get_weights()[0]

    np.testing.assert_array_equal(first_kernel(3), first_kernel(3))
    assert not np.array_equal(first_kernel(3), first_kernel(4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dropout": 1.0}, r"dropout must be in \[0.0, 1.0\), got 1.0"),
        ({"dropout": -0.1}, r"dropout must be in"),
        ({"dense_dropout": 1.5}, r"dense_dropout must be in"),
        ({"conv_blocks": 6}, r"conv_blocks=6 pools a 48x48 input below 1 pixel.*at most 5"),
        ({"conv_blocks": 0}, r"conv_blocks must be >= 1"),
        ({"conv_blocks": 2.0}, r"conv_blocks must be an integer"),
        ({"dense_layers": True}, r"dense_layers must be an integer"),
        ({"conv_batchnorm": "yes"}, r"conv_batchnorm must be True or False, got 'yes'"),
        ({"base_filters": 0}, r"base_filters must be >= 1"),
        ({"num_classes": 1}, r"num_classes must be >= 2"),
        ({"optimizer": "rmsprop"}, r"optimizer must be one of 'adam', 'sgd'; got 'rmsprop'"),
        ({"learning_rate": 0}, r"learning_rate must be in \(0.0, inf\)"),
        ({"momentum": 1.0}, r"momentum must be in"),
        ({"weight_decay": -1e-4}, r"weight_decay must be in"),
        ({"input_shape": (48, 48)}, r"input_shape must be \(height, width, channels\)"),
        ({"seed": -1}, r"seed must be None or an integer"),
    ],
)
def test_baseline_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_baseline_cnn(**kwargs)


# --- ResNet50 transfer: structure and freezing --------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"input_size": 31}, ValueError, r"input_size must be >= 32, got 31"),
        ({"unfreeze": "conv2"}, ValueError, r"unfreeze must be one of 'none', 'conv5', .*'all'"),
        ({"unfreeze_batchnorm": "no"}, ValueError, r"unfreeze_batchnorm must be True or False"),
        ({"dropout": 1}, ValueError, r"dropout must be in"),
        ({"dense1": 0}, ValueError, r"dense1 must be >= 1"),
        ({"optimizer": "adagrad"}, ValueError, r"optimizer must be one of"),
        ({"input_shape": (48, 48, 3)}, ValueError, r"must have 1 \(grayscale\) channel"),
        ({"weights": 7}, ValueError, r"weights must be 'imagenet', None or a path"),
        ({"weights": "/no/such/r.h5"}, FileNotFoundError, r"weights='/no/such/r.h5': no such file"),
    ],
)
def test_resnet_rejects_bad_values(kwargs, error, message):
    with pytest.raises(error, match=message):
        build_resnet50_transfer(**{**TINY_RESNET, **kwargs})


@pytest.fixture(scope="module")
def resnet_weighted_layers() -> list[tuple[str, bool]]:
    """(name, is BatchNormalization) of every ResNet50 layer holding weights."""
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    return [
        (layer.name, isinstance(layer, keras.layers.BatchNormalization))
        for layer in base.layers
        if layer.weights
    ]


def expected_trainable(layers: list[tuple[str, bool]], unfreeze: str, with_bn: bool) -> set[str]:
    # Derived from the names alone (stage, block), not from layer order as the builder does.
    first = {"none": None, "all": (0, 0), "conv3": (3, 0), "conv4": (4, 0),
             "conv4_block3": (4, 3), "conv5": (5, 0)}[unfreeze]  # fmt: skip
    names = set()
    for name, is_bn in layers:
        match = re.match(r"conv(\d)_(?:block(\d+)_)?", name)
        assert match, f"unexpected ResNet50 layer name {name}"
        stage_block = (int(match[1]), int(match[2] or 0))
        if first is not None and stage_block >= first and (with_bn or not is_bn):
            names.add(name)
    return names


@pytest.mark.parametrize("unfreeze_batchnorm", [True, False])
@pytest.mark.parametrize("unfreeze", UNFREEZE_CHOICES)
def test_unfreeze_trains_exactly_the_chosen_layers(
    resnet_weighted_layers, unfreeze, unfreeze_batchnorm
):
    model = build_resnet50_transfer(
        **TINY_RESNET, unfreeze=unfreeze, unfreeze_batchnorm=unfreeze_batchnorm
    )
    expected = expected_trainable(resnet_weighted_layers, unfreeze, unfreeze_batchnorm)
    assert trainable_base_layers(model) == expected
    # Spot checks so the expectation itself cannot drift silently.
    if unfreeze == "conv4_block3":
        assert "conv4_block3_1_conv" in expected and "conv4_block2_3_conv" not in expected
    if unfreeze == "all":
        assert ("conv1_bn" in expected) is unfreeze_batchnorm and "conv1_conv" in expected
    head = {"head_dense1", "head_dense2", "probabilities"}
    assert {layer.name for layer in model.layers if layer.trainable_weights} >= head


def test_resnet_preprocessing_is_caffe_on_grey_repeated():
    model = build_resnet50_transfer(**{**TINY_RESNET, "input_size": 48})
    preprocess = keras.Model(model.input, model.get_layer("caffe_preprocess").output)
    images = raw_images(3)
    expected = keras.applications.resnet50.preprocess_input(np.repeat(images, 3, axis=-1))
    np.testing.assert_allclose(preprocess.predict(images, verbose=0), expected, atol=1e-4)

    resized = keras.Model(model.input, model.get_layer("resize").output)
    assert resized.output_shape == (None, 48, 48, 1)
    big = build_resnet50_transfer(**{**TINY_RESNET, "input_size": 64})
    assert big.get_layer("resize").output.shape == (None, 64, 64, 1)
    assert big.get_layer("resnet50").input_shape == (None, 64, 64, 3)


# --- weights -------------------------------------------------------------------------------


def weights_by_layer(model: keras.Model) -> dict[tuple[str, str], np.ndarray]:
    return {
        (layer.name, variable.name): np.asarray(variable)
        for layer in model.layers
        for variable in layer.weights
    }


@pytest.mark.parametrize("file_name", ["base.weights.h5", "base_legacy.h5"])
def test_resnet_loads_a_local_weights_file(tmp_path, file_name):
    reference = keras.applications.ResNet50(
        include_top=False, weights=None, pooling="avg", input_shape=(32, 32, 3)
    )
    rng = np.random.default_rng(7)
    # Seeded noise, so a fresh random init cannot pass for the loaded weights.
    noise = [rng.normal(size=w.shape).astype("float32") for w in reference.get_weights()]
    reference.set_weights(noise)
    path = tmp_path / file_name
    if file_name.endswith(".weights.h5"):
        reference.save_weights(path)
    else:  # the legacy HDF5 layout of the file keras.applications downloads
        reference.save(path)
    saved = weights_by_layer(reference)
    keras.backend.clear_session()

    model = build_resnet50_transfer(**{**TINY_RESNET, "weights": str(path)})

    loaded = weights_by_layer(model.get_layer("resnet50"))
    assert loaded.keys() == saved.keys()
    for key, value in saved.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=str(key))


def test_resnet_rejects_a_weights_file_of_another_model(tmp_path):
    path = tmp_path / "baseline.weights.h5"
    build_baseline_cnn().save_weights(path)
    with pytest.raises(ValueError, match=r"baseline.weights.h5'?: could not load it into ResNet50"):
        build_resnet50_transfer(**{**TINY_RESNET, "weights": path})


def test_imagenet_constants_match_keras():
    from keras.src.applications import resnet

    assert resnet_transfer.IMAGENET_NOTOP_URL == resnet.BASE_WEIGHTS_PATH + IMAGENET_NOTOP_FILE
    assert resnet_transfer.IMAGENET_NOTOP_MD5 == resnet.WEIGHTS_HASHES["resnet50"][1]


@pytest.fixture
def offline_keras_cache(tmp_path, monkeypatch) -> Path:
    """An empty Keras cache and a download URL that refuses connections, on or offline."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(
        resnet_transfer, "IMAGENET_NOTOP_URL", f"http://127.0.0.1:9/{IMAGENET_NOTOP_FILE}"
    )
    return tmp_path / "keras_home" / "models"


def test_imagenet_unavailable_offline_says_how_to_fix(offline_keras_cache):
    with pytest.raises(WeightsUnavailableError) as info:
        build_resnet50_transfer(**{**TINY_RESNET, "weights": "imagenet"})
    message = str(info.value)
    assert "could not download" in message
    assert f"put {IMAGENET_NOTOP_FILE} in {offline_keras_cache}/" in message
    assert "--set weights=/path/file.h5" in message
    assert "weights=None" in message
    assert "md5" not in message


def test_imagenet_corrupt_cache_file_is_reported(offline_keras_cache):
    offline_keras_cache.mkdir(parents=True)
    (offline_keras_cache / IMAGENET_NOTOP_FILE).write_bytes(b"not an hdf5 file")
    with pytest.raises(WeightsUnavailableError, match=r"A file was already at .* its md5 is not"):
        build_resnet50_transfer(**{**TINY_RESNET, "weights": "imagenet"})


# --- saving and training -------------------------------------------------------------------


def test_baseline_saved_model_reloads_with_the_same_predictions(tmp_path):
    model = build_baseline_cnn(seed=0)
    model.fit(raw_images(16), raw_labels(16), epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "baseline.keras"
    model.save(path)
    images = raw_images(4, seed=1)
    expected = model.predict(images, verbose=0)
    keras.backend.clear_session()

    reloaded = keras.models.load_model(path)

    np.testing.assert_allclose(reloaded.predict(images, verbose=0), expected, atol=1e-6)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")  # never trained
def test_resnet_saved_model_reloads_with_the_same_predictions_and_freezing(tmp_path):
    model = build_resnet50_transfer(**TINY_RESNET, unfreeze="conv5", unfreeze_batchnorm=False)
    path = tmp_path / "resnet.keras"
    model.save(path)
    images = raw_images(4, seed=1)
    expected = model.predict(images, verbose=0)
    trainable = trainable_base_layers(model)
    keras.backend.clear_session()

    reloaded = keras.models.load_model(path)

    np.testing.assert_allclose(reloaded.predict(images, verbose=0), expected, atol=1e-5)
    assert trainable_base_layers(reloaded) == trainable
    assert type(reloaded.optimizer) is keras.optimizers.SGD


def test_baseline_fits_one_epoch():
    model = build_baseline_cnn(seed=0)
    history = model.fit(raw_images(32), raw_labels(32), epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert 0.0 <= history.history["accuracy"][0] <= 1.0


def test_resnet_fits_one_epoch_and_frozen_batchnorm_keeps_its_statistics():
    model = build_resnet50_transfer(
        **TINY_RESNET, unfreeze="conv5", unfreeze_batchnorm=False, seed=0
    )
    base = model.get_layer("resnet50")
    watched = ["conv5_block3_3_conv", "conv5_block3_3_bn", "conv4_block6_3_conv"]
    before = {name: [np.copy(w) for w in base.get_layer(name).get_weights()] for name in watched}

    history = model.fit(raw_images(16), raw_labels(16), epochs=1, batch_size=8, verbose=0)

    assert np.isfinite(history.history["loss"][0])
    after = {name: base.get_layer(name).get_weights() for name in watched}
    assert not np.array_equal(after["conv5_block3_3_conv"][0], before["conv5_block3_3_conv"][0])
    for name in ["conv5_block3_3_bn", "conv4_block6_3_conv"]:  # frozen BN: moving stats too
        for old, new in zip(before[name], after[name], strict=True):
            np.testing.assert_array_equal(new, old, err_msg=name)


# --- real data -------------------------------------------------------------------------------


@pytest.mark.slow
def test_both_families_fit_one_epoch_on_real_fer2013():
    import pandas as pd

    csv = Path(os.environ.get("FER2013_PATH", "/work/shared/fer2013/fer2013.csv.gz"))
    if not csv.is_file():
        pytest.skip(f"FER2013 CSV not found at {csv}; set FER2013_PATH")
    rows = pd.read_csv(csv, nrows=512)
    pixels = rows["pixels"].to_numpy(dtype=str)
    images = np.stack([np.asarray(p.split(), dtype="float32") for p in pixels])
    images = images.reshape(-1, 48, 48, 1)
    labels = rows["emotion"].to_numpy(dtype="int64")
    assert images.min() >= 0 and images.max() <= 255 and set(labels) <= set(range(7))

    for model in (build_baseline_cnn(seed=0), build_resnet50_transfer(weights=None, seed=0)):
        history = model.fit(images, labels, epochs=1, batch_size=64, verbose=0)
        assert np.isfinite(history.history["loss"][0]), model.name
        keras.backend.clear_session()
