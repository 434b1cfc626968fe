"""The Optuna sampling adapter: a space's parameters as `trial.suggest_*` calls."""
from __future__ import annotations

from typing import Any

import optuna

from search.space import BoolParam, CategoricalParam, FloatParam, IntParam, Space


def suggest(trial: optuna.trial.BaseTrial, space: Space) -> dict[str, Any]:
    """Sample one configuration of `space` from an Optuna trial (or a `FixedTrial`)."""

    def one(name: str, p: Any, values: dict[str, Any]) -> Any:
        if isinstance(p, FloatParam):
            low, high, _ = p.bounds(values)
            return trial.suggest_float(name, low, high, log=p.log, step=p.step)
        if isinstance(p, IntParam):
            return trial.suggest_int(name, p.low, p.high, log=p.log, step=p.step)
        if isinstance(p, CategoricalParam):
            return trial.suggest_categorical(name, p.choices)
        if isinstance(p, BoolParam):
            return trial.suggest_categorical(name, [False, True])
        raise TypeError(f"cannot sample parameter {name!r} of type {type(p).__name__}")

    return space.sample(one)


def enqueue_params(space: Space) -> dict[str, Any]:
    """The default point as Optuna `enqueue_trial` params (searchable parameters only)."""
    searchable = space.searchable()
    return {k: v for k, v in space.defaults().items() if k in searchable}
