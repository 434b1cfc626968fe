"""ImageNet ResNet50 with a new head, fine-tuned from a chosen stage onwards."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import keras
from keras import layers

from fer_models._batchnorm import fuse_batchnorm
from fer_models._common import (
    check_bool,
    check_float,
    check_input_shape,
    check_int,
    check_seed,
    compile_classifier,
    make_optimizer,
)

UNFREEZE_CHOICES = ("none", "conv5", "conv4", "conv4_block3", "conv3", "all")
# First layer-name prefix of the unfrozen part; that layer and everything after it train.
_UNFROZEN_FROM = {
    "conv5": "conv5_",
    "conv4": "conv4_",
    "conv4_block3": "conv4_block3_",
    "conv3": "conv3_",
}

BASE_LAYER_NAME = "resnet50"
MIN_INPUT_SIZE = 32  # the smallest input keras.applications.ResNet50 accepts
# keras.applications 'caffe' preprocessing subtracts these from B, G, R. Grey repeated to three
# channels is the same image in RGB or BGR order, so channel 0 simply takes the blue mean.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_NOTOP_FILE
)
IMAGENET_NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"  # as in keras.applications.resnet


class WeightsUnavailableError(RuntimeError):
    """The ImageNet weights are neither in the Keras cache nor downloadable."""


def keras_cache_dir() -> Path:
    """Where Keras keeps downloads: $KERAS_HOME, else ~/.keras (read at call time)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def imagenet_weights_path() -> Path:
    """Path of the no-top ResNet50 ImageNet weights; downloads them to the Keras cache if needed.

    Raises:
        WeightsUnavailableError: Not cached (or cached but corrupt) and the download failed.
    """
    # The same download keras.applications.ResNet50(weights="imagenet") makes, done here so the
    # cache dir follows KERAS_HOME at call time and an offline failure can say what to do.
    cache_dir = keras_cache_dir()
    target = cache_dir / "models" / IMAGENET_NOTOP_FILE
    was_cached = target.exists()
    try:
        path = keras.utils.get_file(
            IMAGENET_NOTOP_FILE,
            IMAGENET_NOTOP_URL,
            cache_dir=str(cache_dir),
            cache_subdir="models",
            file_hash=IMAGENET_NOTOP_MD5,
        )
    except Exception as error:  # get_file raises a bare Exception on network failures
        stale = (
            f" A file was already at {target} but its md5 is not {IMAGENET_NOTOP_MD5} (incomplete "
            "or a different file), so Keras tried to download it again."
            if was_cached
            else ""
        )
        raise WeightsUnavailableError(
            f"weights='imagenet': this machine could not download the ResNet50 ImageNet weights "
            f"from {IMAGENET_NOTOP_URL} ({error}).{stale} Fix one of: put {IMAGENET_NOTOP_FILE} "
            f"in {target.parent}/ (Keras's cache; KERAS_HOME moves it); or pass "
            "weights=/path/to/that_file.h5 (on the command line: --set weights=/path/file.h5); "
            "or pass weights=None (--set weights=null) to train from scratch."
        ) from error
    return Path(path)


def resolve_weights(weights: object) -> Path | None:
    """The weights file `weights` names ('imagenet', a path or None), or a clear error now."""
    if weights is None:
        return None
    if weights == "imagenet":
        return imagenet_weights_path()
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"weights must be 'imagenet', None or a path to a weights file, got {weights!r}"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights={str(weights)!r}: no such file. Pass the path of a weights file of "
            "keras.applications.ResNet50(include_top=False) (.h5 or .weights.h5), "
            "'imagenet', or None to train from scratch."
        )
    return path


def _load_base_weights(base: keras.Model, path: Path) -> None:
    # A mismatched file makes Keras warn once per layer before it raises; keep only the error.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            base.load_weights(path)
        except Exception as error:
            summary = " ".join(str(error).split("\n")[:3])
            raise ValueError(
                f"weights={str(path)!r}: could not load it into ResNet50(include_top=False); "
                f"is it a weights file of that model? Keras said: {summary}"
            ) from error
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _set_trainable(base: keras.Model, unfreeze: str, unfreeze_batchnorm: bool) -> None:
    if unfreeze == "none":
        base.trainable = False
        return
    base.trainable = True
    if unfreeze == "all":
        start = 0
    else:
        prefix = _UNFROZEN_FROM[unfreeze]
        start = next(i for i, layer in enumerate(base.layers) if layer.name.startswith(prefix))
    for i, layer in enumerate(base.layers):
        frozen_bn = isinstance(layer, layers.BatchNormalization) and not unfreeze_batchnorm
        # A frozen BatchNormalization runs in inference mode in Keras 3 (keeps ImageNet stats).
        layer.trainable = i >= start and not frozen_bn


def trainable_base_layers(model: keras.Model) -> set[str]:
    """Names of the ResNet50 layers whose weights train in a model built here."""
    base = model.get_layer(BASE_LAYER_NAME)
    return {layer.name for layer in base.layers if layer.trainable_weights}


def build_resnet50_transfer(
    *,
    num_classes: int = 7,
    weights: str | os.PathLike | None = "imagenet",
    input_size: int = 96,
    unfreeze: str = "conv4",
    unfreeze_batchnorm: bool = True,
    dense1: int = 1024,
    dense2: int = 256,
    dropout: float = 0.25,
    optimizer: str = "sgd",
    learning_rate: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    input_shape: tuple[int, int, int] = (48, 48, 1),
    seed: int | None = None,
) -> keras.Model:
    """Build and compile ResNet50 (no top, average pooled) with a two-layer dense head.

    Inside the model: resize to ``input_size``, grey to three channels, 'caffe' mean
    subtraction, so it takes raw grayscale pixels 0..255 and a saved .keras file needs no
    custom objects.

    Args:
        num_classes: Number of output classes (labels are int class indices).
        weights: "imagenet" (Keras cache, else download), a path to no-top ResNet50
            weights (.h5 or .weights.h5), or None for random initialisation.
        input_size: Side the images are resized to before the base, >= 32.
        unfreeze: Which base layers train, one of UNFREEZE_CHOICES: "none"; "conv5",
            "conv4", "conv3" (that stage and later); "conv4_block3" (from conv4_block3 on);
            "all".
        unfreeze_batchnorm: False keeps the BatchNormalization layers of the unfrozen part
            frozen (inference mode).
        dense1: Units of the first head layer.
        dense2: Units of the second head layer.
        dropout: Dropout rate after each head layer, in [0, 1).
        optimizer: "sgd" (Nesterov momentum) or "adam" (AdamW when weight_decay > 0).
        learning_rate: Optimizer learning rate, > 0.
        momentum: SGD momentum in [0, 1); ignored by Adam.
        weight_decay: Decoupled weight decay, >= 0.
        input_shape: Shape of one raw grayscale image; the channel count must be 1.
        seed: Seeds Python, NumPy and the backend before building when not None.

    Returns:
        A compiled keras.Model mapping raw pixels to class probabilities.

    Raises:
        ValueError: A parameter is out of range, or the weights file does not fit ResNet50.
        FileNotFoundError: ``weights`` is a path that does not exist.
        WeightsUnavailableError: "imagenet" weights are not cached and cannot be downloaded.
    """
    num_classes = check_int("num_classes", num_classes, minimum=2)
    input_size = check_int("input_size", input_size, minimum=MIN_INPUT_SIZE)
    dense1 = check_int("dense1", dense1, minimum=1)
    dense2 = check_int("dense2", dense2, minimum=1)
    dropout = check_float("dropout", dropout, low=0.0, high=1.0)
    if unfreeze not in UNFREEZE_CHOICES:
        raise ValueError(
            f"unfreeze must be one of {', '.join(map(repr, UNFREEZE_CHOICES))}; got {unfreeze!r}"
        )
    unfreeze_batchnorm = check_bool("unfreeze_batchnorm", unfreeze_batchnorm)
    input_shape = check_input_shape(input_shape)
    if input_shape[2] != 1:
        raise ValueError(
            f"input_shape must have 1 (grayscale) channel, got {input_shape}; "
            "the model repeats grey to the three channels ResNet50 expects"
        )
    opt = make_optimizer(
        optimizer, learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay
    )
    weights_path = resolve_weights(weights)
    check_seed(seed)

    base = keras.applications.ResNet50(
        include_top=False,
        weights=None,
        pooling="avg",
        input_shape=(input_size, input_size, 3),
        name=BASE_LAYER_NAME,
    )
    if weights_path is not None:
        _load_base_weights(base, weights_path)
    _set_trainable(base, unfreeze, unfreeze_batchnorm)
    for layer in base.layers:  # BatchNormalization by TensorFlow's fused kernels, frozen or not (fer_models._batchnorm)
        fuse_batchnorm(layer)

    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Resizing(input_size, input_size, name="resize")(inputs)
    x = layers.Concatenate(name="grey_to_bgr")([x, x, x])
    x = layers.Normalization(
        mean=list(CAFFE_BGR_MEAN), variance=[1.0, 1.0, 1.0], name="caffe_preprocess"
    )(x)
    x = base(x)
    x = layers.Dense(dense1, activation="relu", name="head_dense1")(x)
    x = layers.Dropout(dropout, name="head_dropout1")(x)
    x = layers.Dense(dense2, activation="relu", name="head_dense2")(x)
    x = layers.Dropout(dropout, name="head_dropout2")(x)
    # float32 even under a mixed-precision policy: a bfloat16 softmax rounds probabilities to 3 digits
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="resnet50_transfer")
    return compile_classifier(model, opt)
