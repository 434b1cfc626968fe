"""Validation and compile code shared by the model builders."""

from __future__ import annotations

import numbers

import keras

OPTIMIZERS = ("adam", "sgd")


def check_int(name: str, value: object, *, minimum: int) -> int:
    # bool is an int subclass; True/False for a layer count is always a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_float(
    name: str,
    value: object,
    *,
    low: float,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
) -> float:
    left = "[" if low_inclusive else "("
    right = "]" if high_inclusive else ")"
    interval = f"{left}{low}, {'inf' if high is None else high}{right}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    value = float(value)
    too_low = value < low if low_inclusive else value <= low
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def check_input_shape(input_shape: object) -> tuple[int, int, int]:
    def positive_int(d: object) -> bool:
        return isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1

    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) != 3
        or not all(positive_int(d) for d in input_shape)
    ):
        raise ValueError(
            "input_shape must be (height, width, channels) of positive integers, "
            f"got {input_shape!r}"
        )
    return tuple(int(d) for d in input_shape)


def check_seed(seed: object) -> None:
    """Seed Python, NumPy and backend RNGs, so one seed gives one set of initial weights."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be None or an integer >= 0, got {seed!r}")
    keras.utils.set_random_seed(int(seed))


def make_optimizer(
    optimizer: str, *, learning_rate: float, momentum: float, weight_decay: float
) -> keras.optimizers.Optimizer:
    """Adam (AdamW when weight_decay > 0) or Nesterov SGD with momentum, each updating a variable
    with one fused TensorFlow kernel (fer_models._optimizers: the same arithmetic, faster)."""
    from fer_models._optimizers import fuse

    learning_rate = check_float("learning_rate", learning_rate, low=0.0, low_inclusive=False)
    momentum = check_float("momentum", momentum, low=0.0, high=1.0)
    weight_decay = check_float("weight_decay", weight_decay, low=0.0)
    if optimizer == "adam":
        if weight_decay > 0:
            return fuse(keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay))
        return fuse(keras.optimizers.Adam(learning_rate=learning_rate))
    if optimizer == "sgd":
        return fuse(
            keras.optimizers.SGD(
                learning_rate=learning_rate,
                momentum=momentum,
                nesterov=True,
                weight_decay=weight_decay or None,
            )
        )
    choices = ", ".join(map(repr, OPTIMIZERS))
    raise ValueError(f"optimizer must be one of {choices}; got {optimizer!r}")


def compile_classifier(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> keras.Model:
    # Labels are integer class indices, hence the sparse loss.
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
