"""The small CNN trained from scratch: the seed study's recipe, with its knobs exposed."""

from __future__ import annotations

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

MIN_DENSE_UNITS = 16


def build_baseline_cnn(
    *,
    num_classes: int = 7,
    base_filters: int = 16,
    conv_blocks: int = 4,
    dropout: float = 0.25,
    conv_batchnorm: bool = False,
    dense_units: int = 512,
    dense_layers: int = 3,
    dense_dropout: float = 0.25,
    optimizer: str = "adam",
    learning_rate: float = 8e-4,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    input_shape: tuple[int, int, int] = (48, 48, 1),
    seed: int | None = None,
) -> keras.Model:
    """Build and compile the baseline CNN; the defaults reproduce the seed recipe.

    Block i is two 3x3 'same' ReLU convolutions of ``base_filters * 2**i`` filters followed by
    BatchNormalization, MaxPooling2D(2) and Dropout(dropout); with ``conv_batchnorm`` every
    convolution has its own BatchNormalization instead of one per pair. The head is ``dense_layers`` ReLU
    Dense layers (``dense_units``, then halving, never below 16 or ``dense_units``), each
    followed by Dropout(dense_dropout), and a softmax output.

    Args:
        num_classes: Number of output classes (labels are int class indices).
        base_filters: Filters of the first conv pair.
        conv_blocks: Number of conv pairs; each halves the spatial size.
        dropout: Dropout rate after each conv block, in [0, 1).
        conv_batchnorm: BatchNormalization after every convolution (False: after every pair,
            the seed's).
        dense_units: Units of the first hidden Dense layer.
        dense_layers: Number of hidden Dense layers (0 = straight to the output).
        dense_dropout: Dropout rate after each hidden Dense layer, in [0, 1).
        optimizer: "adam" (AdamW when weight_decay > 0) or "sgd" (Nesterov momentum).
        learning_rate: Optimizer learning rate, > 0.
        momentum: SGD momentum in [0, 1); ignored by Adam.
        weight_decay: Decoupled weight decay, >= 0.
        input_shape: Shape of one raw image, pixels 0..255.
        seed: Seeds Python, NumPy and the backend before building when not None.

    Returns:
        A compiled keras.Model mapping raw pixels to class probabilities.

    Raises:
        ValueError: A parameter is out of range; the message names it.
    """
    num_classes = check_int("num_classes", num_classes, minimum=2)
    base_filters = check_int("base_filters", base_filters, minimum=1)
    conv_blocks = check_int("conv_blocks", conv_blocks, minimum=1)
    dense_units = check_int("dense_units", dense_units, minimum=1)
    dense_layers = check_int("dense_layers", dense_layers, minimum=0)
    dropout = check_float("dropout", dropout, low=0.0, high=1.0)
    dense_dropout = check_float("dense_dropout", dense_dropout, low=0.0, high=1.0)
    conv_batchnorm = check_bool("conv_batchnorm", conv_batchnorm)
    input_shape = check_input_shape(input_shape)
    height, width = input_shape[0], input_shape[1]
    if min(height, width) >> conv_blocks < 1:
        fits = min(height, width).bit_length() - 1
        raise ValueError(
            f"conv_blocks={conv_blocks} pools a {height}x{width} input below 1 pixel "
            f"(each block halves it); at most {fits} blocks fit"
        )
    opt = make_optimizer(
        optimizer, learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay
    )
    check_seed(seed)

    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for block in range(conv_blocks):
        filters = base_filters * 2**block
        for conv in (1, 2):
            x = layers.Conv2D(
                filters, 3, padding="same", activation="relu", name=f"block{block + 1}_conv{conv}"
            )(x)
            if conv_batchnorm:
                x = fuse_batchnorm(layers.BatchNormalization(name=f"block{block + 1}_conv{conv}_bn"))(x)
        if not conv_batchnorm:
            x = fuse_batchnorm(layers.BatchNormalization(name=f"block{block + 1}_bn"))(x)
        x = layers.MaxPooling2D(2, name=f"block{block + 1}_pool")(x)
        x = layers.Dropout(dropout, name=f"block{block + 1}_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    for i in range(dense_layers):
        units = max(min(dense_units, MIN_DENSE_UNITS), dense_units // 2**i)
        x = layers.Dense(units, activation="relu", name=f"dense{i + 1}")(x)
        x = layers.Dropout(dense_dropout, name=f"dense{i + 1}_dropout")(x)
    # float32 even under a mixed-precision policy: a bfloat16 softmax rounds probabilities to 3 digits
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="baseline_cnn")
    return compile_classifier(model, opt)
