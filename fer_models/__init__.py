"""Keras model builders for FER2013: keyword arguments in, compiled keras.Model out.

Every model takes raw grayscale pixels (float32, 0..255, shape (48, 48, 1) by default) and
outputs softmax probabilities, one per class; preprocessing lives inside the model.

``MODELS`` maps a model name to its builder. It resolves builders on first access, so
importing this package (or listing ``MODELS``) does not import TensorFlow.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

_BUILDER_PATHS = {
    "baseline_cnn": "fer_models.baseline_cnn:build_baseline_cnn",
    "resnet50_transfer": "fer_models.resnet_transfer:build_resnet50_transfer",
}


class UnknownModelError(KeyError):
    """A model name that is not in MODELS."""

    def __init__(self, name: object) -> None:
        super().__init__(name)
        self.message = f"unknown model {name!r}; known models: {', '.join(sorted(_BUILDER_PATHS))}"

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return self.message


class _LazyBuilders(Mapping[str, Callable[..., Any]]):
    """Read-only name -> builder mapping that imports a builder's module on first access."""

    def __getitem__(self, name: str) -> Callable[..., Any]:
        if name not in _BUILDER_PATHS:
            raise UnknownModelError(name)
        module_name, function_name = _BUILDER_PATHS[name].split(":")
        return getattr(importlib.import_module(module_name), function_name)

    def __iter__(self) -> Iterator[str]:
        return iter(_BUILDER_PATHS)

    def __len__(self) -> int:
        return len(_BUILDER_PATHS)

    def __repr__(self) -> str:
        return f"MODELS({', '.join(_BUILDER_PATHS)})"


MODELS: Mapping[str, Callable[..., Any]] = _LazyBuilders()


def get_builder(name: str) -> Callable[..., Any]:
    """Return the builder registered under ``name``.

    Raises:
        UnknownModelError: ``name`` is not in MODELS; the message lists the known names.
    """
    return MODELS[name]


def builder_defaults(name: str) -> dict[str, object]:
    """Keyword-only parameters of a builder and their defaults, e.g. to validate a search space.

    Raises:
        UnknownModelError: ``name`` is not in MODELS.
    """
    signature = inspect.signature(get_builder(name))
    return {
        param.name: param.default
        for param in signature.parameters.values()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }


__all__ = ["MODELS", "UnknownModelError", "builder_defaults", "get_builder"]
