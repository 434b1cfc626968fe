"""The KerasTuner sampling adapter: a space's parameters as KerasTuner hyperparameters.

Every parameter is declared, active or not, with its conditions, so KerasTuner sees the whole space
at once; the configuration is then read with `Space.sample`, the walk the Optuna adapter uses too,
so the two drivers cannot disagree on what a trial trains.

    float (log, step)    hp.Float (sampling="log", step)
    int                  hp.Int
    categorical          hp.Choice
    bool                 hp.Boolean
    fixed                hp.Fixed
    when: {p: v}         conditions on p (KerasTuner's `Parent`, what conditional_scope records)
    depends_on + ranges  one hp.Float per branch, named `learning_rate@adam`, `learning_rate@sgd`

Conditions are attached to the hyperparameters directly rather than through
`hp.conditional_scope`: a scope only opens on a parent declared in the enclosing scope, so
`when: {optimizer: sgd, batch_size: 32}` (two top-level parents) cannot be written with scopes.
The stored conditions are the same either way.
"""
from __future__ import annotations

import json
from typing import Any

import keras_tuner as kt
from keras_tuner.engine import hyperparameters as kt_hp
from keras_tuner.src.engine.conditions import Parent  # not re-exported by KerasTuner 1.4.8

from search.space import BoolParam, CategoricalParam, FixedParam, FloatParam, IntParam, Space

BRANCH = "@"  # learning_rate@adam: the range of learning_rate when optimizer is adam


def kt_name(name: str, p: Any, values: dict[str, Any]) -> str:
    """The KerasTuner name of a parameter for the values sampled so far."""
    if isinstance(p, FloatParam) and p.depends_on:
        return f"{name}{BRANCH}{values[p.depends_on]}"
    return name


def declare(hp: kt.HyperParameters, space: Space) -> None:
    """Register every parameter of `space` on `hp` (a no-op for those it already holds).

    A fresh `HyperParameters()` then holds the space's default point; values already on `hp` (from
    a trial, or `hp.Fixed`) are kept.
    """
    for name, p in space.params.items():
        conditions = _conditions(space, p.when or {})
        if conditions is None:
            continue  # its condition matches no value its parent can take: never active
        if isinstance(p, FloatParam) and p.depends_on:
            for value in _branches(space, p):
                low, high, default = p.bounds({p.depends_on: value})
                branch = conditions + [Parent(p.depends_on, [_codec(space, p.depends_on).encode(value)])]
                _register(hp, _float(f"{name}{BRANCH}{value}", p, low, high, default, branch))
        else:
            _register(hp, _declaration(space, name, p, conditions))


def config_from_hp(hp: kt.HyperParameters, space: Space) -> dict[str, Any]:
    """Declare `space` on `hp` and read the configuration it holds: plain values by parameter name,
    exactly what the Optuna adapter returns for the same point."""
    declare(hp, space)

    def read(name: str, p: Any, values: dict[str, Any]) -> Any:
        key = kt_name(name, p, values)
        if key not in hp.values:
            raise KeyError(f"KerasTuner holds no value for {key!r} although {name!r} is active; "
                           f"its values: {sorted(hp.values)}")
        raw = hp.values[key]
        if isinstance(p, FloatParam):
            low, high, _ = p.bounds(values)
            return _snap(float(raw), low, high, p.step)
        if isinstance(p, IntParam):
            return int(raw)
        if isinstance(p, BoolParam):
            return bool(raw)
        return _codec(space, name).decode(raw)

    return space.sample(read)


def default_values(space: Space) -> dict[str, Any]:
    """The default point as KerasTuner values (what a fresh `HyperParameters` holds)."""
    hp = kt.HyperParameters()
    declare(hp, space)
    return dict(hp.values)


# -- declarations ---------------------------------------------------------------------------------


def _declaration(space: Space, name: str, p: Any, conditions: list[Parent]) -> kt_hp.HyperParameter:
    if isinstance(p, FloatParam):
        return _float(name, p, p.low, p.high, p.default, conditions)
    if isinstance(p, IntParam):
        # KerasTuner's log step is a multiplier; the space's log ints take every integer
        step = None if p.log else p.step
        return kt_hp.Int(name, p.low, p.high, step=step, sampling="log" if p.log else "linear",
                         default=p.default, conditions=conditions)
    if isinstance(p, BoolParam):
        return kt_hp.Boolean(name, default=p.default, conditions=conditions)
    codec = _codec(space, name)
    if isinstance(p, CategoricalParam):
        return kt_hp.Choice(name, [codec.encode(c) for c in p.choices], default=codec.encode(p.default),
                            conditions=conditions)
    if isinstance(p, FixedParam):
        return kt_hp.Fixed(name, codec.encode(p.value), conditions=conditions)
    raise TypeError(f"cannot declare parameter {name!r} of type {type(p).__name__}")


def _float(name: str, p: FloatParam, low: float, high: float, default: float,
           conditions: list[Parent]) -> kt_hp.Float:
    step = p.step
    # KerasTuner counts grid points with float floor division, which drops the top of ranges such
    # as [0.15, 0.5] in steps of 0.05; a hair above `high` keeps it (values are snapped on reading).
    top = high + step * 1e-6 if step else high
    return kt_hp.Float(name, low, top, step=step, sampling="log" if p.log else "linear",
                       default=default, conditions=conditions)


def _register(hp: kt.HyperParameters, declaration: kt_hp.HyperParameter) -> None:
    hp.merge([declaration], overwrite=False)  # keeps a value already there (a trial's, hp.Fixed)


def _conditions(space: Space, when: dict[str, Any]) -> list[Parent] | None:
    out = []
    for parent, wanted in when.items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        possible = _possible(space, parent)
        if possible is None:  # a numeric range: floats, so KerasTuner does not truncate 2.5 to 2
            matched = [float(v) for v in allowed if isinstance(v, (int, float))]
        else:  # the parent's own values that Python's `in` accepts, as the Space's is_active does
            codec = _codec(space, parent)
            matched = [codec.encode(v) for v in possible if v in allowed]
        if not matched:
            return None
        out.append(Parent(parent, matched))
    return out


def _branches(space: Space, p: FloatParam) -> list[Any]:
    """The values of `p.depends_on` that select one of its ranges."""
    possible = _possible(space, p.depends_on) or [space.defaults().get(p.depends_on)]  # type: ignore[arg-type]
    return [v for v in possible if str(v) in p.ranges]  # type: ignore[operator]


def _possible(space: Space, name: str) -> list[Any] | None:
    """The values a parameter can take, or None for a numeric range."""
    p = space.params[name]
    if isinstance(p, CategoricalParam):
        return list(p.choices)
    if isinstance(p, BoolParam):
        return [False, True]
    if isinstance(p, FixedParam):
        return [p.value]
    return None


class _Codec:
    """Maps a parameter's values to what KerasTuner can hold, or to their JSON text where it cannot:
    None, mixed types, and bools in a categorical (hp.Choice would turn them into 0 and 1)."""

    def __init__(self, values: list[Any], kinds: tuple[type, ...]):
        self.native = len({type(v) for v in values}) == 1 and type(values[0]) in kinds

    def encode(self, value: Any) -> Any:
        return value if self.native else json.dumps(value)

    def decode(self, held: Any) -> Any:
        return held if self.native else json.loads(held)


def _codec(space: Space, name: str) -> _Codec:
    p = space.params[name]
    if isinstance(p, CategoricalParam):
        return _Codec(list(p.choices), (str, int, float))
    if isinstance(p, FixedParam):
        return _Codec([p.value], (str, int, float, bool))
    return _Codec([0], (int,))  # bools, ints and floats are held as they are


def _snap(value: float, low: float, high: float, step: float | None) -> float:
    """Undo float noise: back onto the step grid and inside [low, high]."""
    if step:
        value = round(low + round((value - low) / step) * step, 12)
    tolerance = (high - low) * 1e-9
    if low - tolerance <= value <= high + tolerance:
        value = min(max(value, low), high)
    return value
