"""Declarative search spaces: one YAML file each under spaces/, validated at load time.

A space names a model builder, the data settings, the training budget and its parameters. Every
parameter carries a default: the defaults together are the seed's hand-tuned configuration, so a
search can start from it and a leaderboard can show it beside what the search found.

    model: baseline_cnn
    labels: fer7
    budget: {epochs: 12, subset: 0.25, min_epochs: 3}
    params:
      dropout: {type: float, low: 0.2, high: 0.45, step: 0.05, default: 0.25}
      optimizer: {type: categorical, choices: [adam, sgd], default: adam}
      learning_rate:
        type: float
        log: true
        depends_on: optimizer          # the range depends on the optimizer's value
        ranges:
          adam: {low: 1.0e-5, high: 3.0e-3, default: 8.0e-4}
          sgd: {low: 1.0e-3, high: 1.0e-1, default: 1.0e-2}
      momentum: {type: float, low: 0.8, high: 0.99, default: 0.9, when: {optimizer: sgd}}
      batch_size: 64                   # a bare value is a fixed parameter
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SPACES_DIR = Path(__file__).resolve().parent.parent / "spaces"

# Settings the objective consumes (not the model builder); each may be searched like any parameter.
TRAINING_DEFAULTS: dict[str, Any] = {
    "batch_size": 64,
    "flip": True,
    "rotation": 0.0,  # fraction of a full turn, as keras.layers.RandomRotation takes it
    "zoom": 0.0,
    "shift": 0.0,
    "class_weights": False,
    "lr_schedule": "constant",  # constant | cosine | plateau
    "label_smoothing": 0.0,
}
LR_SCHEDULES = ("constant", "cosine", "plateau")
AUGMENT_LIMITS = {"rotation": 0.5, "zoom": 0.9, "shift": 0.9}
"""The largest rotation (fraction of a turn), zoom and shift (fractions) the augmentation takes."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fraction(high: float, what: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _number(v) and 0 <= v <= high), f"{what} in [0, {high}]"


# What each training setting may be, checked at load time so a bad value fails before any training.
_SETTING_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "batch_size": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a whole number >= 1"),
    "flip": (lambda v: isinstance(v, bool), "true or false"),
    "class_weights": (lambda v: isinstance(v, bool), "true or false"),
    "rotation": _fraction(AUGMENT_LIMITS["rotation"], "a fraction of a turn"),
    "zoom": _fraction(AUGMENT_LIMITS["zoom"], "a fraction"),
    "shift": _fraction(AUGMENT_LIMITS["shift"], "a fraction of the image"),
    "lr_schedule": (lambda v: v in LR_SCHEDULES, "one of " + ", ".join(LR_SCHEDULES)),
    "label_smoothing": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
}
# Builder arguments the framework sets itself from the data and the run.
RESERVED = ("num_classes", "input_shape", "seed")

Scalar = Union[bool, int, float, str, None]


class SpaceError(ValueError):
    """A search space that cannot be used; the message names the file, the parameter and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Range(_Strict):
    low: float
    high: float
    default: float | None = None


class _Param(_Strict):
    when: dict[str, Scalar | list[Scalar]] | None = None

    def is_active(self, values: dict[str, Any]) -> bool:
        """True when every `when` condition holds for the values sampled so far."""
        for parent, wanted in (self.when or {}).items():
            allowed = wanted if isinstance(wanted, list) else [wanted]
            if parent not in values or values[parent] not in allowed:
                return False
        return True

    def parents(self) -> list[str]:
        return list(self.when or {})


class FloatParam(_Param):
    type: Literal["float"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    default: float | None = None
    depends_on: str | None = None
    ranges: dict[str, _Range] | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if self.log and self.step is not None:
            raise ValueError("a float parameter takes 'log: true' or a 'step', not both")
        if (self.depends_on is None) != (self.ranges is None):
            raise ValueError("'depends_on' and 'ranges' go together: give both or neither")
        if self.ranges is None:
            if self.low is None or self.high is None:
                raise ValueError("a float parameter needs 'low' and 'high' (or 'depends_on' with 'ranges')")
            _check_range(self.low, self.high, self.log, self.step, self.default)
            if self.default is None:
                raise ValueError("give a 'default' (the seed's value) so the search can start from it")
        else:
            if self.low is not None or self.high is not None:
                raise ValueError("with 'ranges', put 'low' and 'high' inside each range, not beside them")
            for key, r in self.ranges.items():
                try:
                    _check_range(r.low, r.high, self.log, self.step, r.default)
                except ValueError as exc:
                    raise ValueError(f"range for {self.depends_on}={key}: {exc}") from None
        return self

    def parents(self) -> list[str]:
        return super().parents() + ([self.depends_on] if self.depends_on else [])

    def bounds(self, values: dict[str, Any]) -> tuple[float, float, float | None]:
        """(low, high, default) for the values sampled so far."""
        if self.ranges is None:
            return self.low, self.high, self.default  # type: ignore[return-value]
        r = self.ranges[str(values[self.depends_on])]
        return r.low, r.high, r.default if r.default is not None else _midpoint(r.low, r.high, self.log)


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1
    default: int

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_range(self.low, self.high, self.log, self.step, self.default)
        if self.log and self.step != 1:
            raise ValueError("'log: true' needs 'step: 1' (Optuna and KerasTuner both require it)")
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)
    default: Scalar

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        if self.default not in self.choices:
            raise ValueError(f"default {self.default!r} is not one of the choices {self.choices}")
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError(f"choices {self.choices} repeat a value")
        return self


class BoolParam(_Param):
    type: Literal["bool"]
    default: bool


class FixedParam(_Param):
    type: Literal["fixed"]
    value: Scalar

    @property
    def default(self) -> Scalar:
        return self.value


Param = Annotated[
    Union[FloatParam, IntParam, CategoricalParam, BoolParam, FixedParam], Field(discriminator="type")
]
SEARCHABLE = (FloatParam, IntParam, CategoricalParam, BoolParam)


class Budget(_Strict):
    epochs: int = Field(12, ge=1, description="most epochs a trial trains: Hyperband's max resource")
    min_epochs: int = Field(3, ge=1, description="fewest epochs before a trial may be pruned")
    subset: float = Field(1.0, gt=0, le=1, description="fraction of Training each trial trains on")

    @model_validator(mode="after")
    def _check(self) -> Budget:
        if self.min_epochs > self.epochs:
            raise ValueError(f"min_epochs ({self.min_epochs}) must be <= epochs ({self.epochs})")
        return self


class Space(_Strict):
    """A validated search space. Build it with `load_space`, not directly."""

    name: str
    model: str
    description: str = ""
    labels: str | dict[str, Any] = "fer7"
    budget: Budget = Budget()
    params: dict[str, Param] = {}
    source: dict[str, Any] | None = None  # where an exported configuration came from
    path: str | None = Field(None, exclude=True)

    # -- sampling -----------------------------------------------------------------------------
    def defaults(self) -> dict[str, Any]:
        """The default point: every active parameter at its default."""
        values: dict[str, Any] = {}
        for name, p in self.params.items():
            if not p.is_active(values):
                continue
            values[name] = p.bounds(values)[2] if isinstance(p, FloatParam) else p.default
        return values

    def sample(self, suggest: Callable[[str, Any, dict[str, Any]], Any]) -> dict[str, Any]:
        """Walk the parameters in order and ask `suggest(name, param, values_so_far)` for each
        active searchable one; fixed parameters take their value. Drivers differ only in `suggest`."""
        values: dict[str, Any] = {}
        for name, p in self.params.items():
            if p.is_active(values):
                values[name] = p.value if isinstance(p, FixedParam) else suggest(name, p, values)
        return values

    def searchable(self) -> dict[str, Any]:
        return {n: p for n, p in self.params.items() if isinstance(p, SEARCHABLE)}

    def validate_value(self, name: str, value: Any, values: dict[str, Any] | None = None) -> Any:
        """Check one value against its parameter; return it coerced to the parameter's type."""
        if name not in self.params:
            raise SpaceError(f"{self._where()}: unknown parameter {name!r}; known: {', '.join(self.params)}")
        p = self.params[name]
        values = values if values is not None else self.defaults()
        where = f"{self._where()}: parameter {name!r}"
        if isinstance(p, FixedParam):  # an exported configuration's value, or one `--set` replaces
            if name in _SETTING_RULES:
                _check_setting(self._where(), name, p.model_copy(update={"value": value}))
            return value
        if isinstance(p, BoolParam):
            if not isinstance(value, bool):
                raise SpaceError(f"{where}: {value!r} is not true or false")
            return value
        if isinstance(p, CategoricalParam):
            if value not in p.choices:
                raise SpaceError(f"{where}: {value!r} is not one of {p.choices}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpaceError(f"{where}: {value!r} is not a number")
        low, high, _ = p.bounds(values) if isinstance(p, FloatParam) else (p.low, p.high, None)
        if not low <= value <= high:
            raise SpaceError(f"{where}: {value} is outside its range [{low}, {high}]")
        if isinstance(p, IntParam):
            if value != int(value):
                raise SpaceError(f"{where}: {value} is not a whole number")
            return int(value)
        return float(value)

    def with_fixed(self, overrides: dict[str, Any]) -> Space:
        """A copy with some parameters fixed (the `--set key=value` of the CLIs)."""
        values = self.defaults() | overrides
        params = dict(self.params)
        for name, value in overrides.items():
            checked = self.validate_value(name, value, values)
            params[name] = FixedParam(type="fixed", value=checked, when=self.params[name].when)
        return self.model_copy(update={"params": params})

    def fixed(self, values: dict[str, Any], source: dict[str, Any] | None = None) -> Space:
        """This space with every parameter fixed at `values`: an exported configuration."""
        params = {n: FixedParam(type="fixed", value=v) for n, v in values.items()}
        return self.model_copy(update={"params": params, "source": source})

    def with_settings(self, **changes: Any) -> Space:
        """A copy with `labels`, or budget fields (`epochs`, `subset`, `min_epochs`), changed."""
        budget = {k: changes.pop(k) for k in ("epochs", "subset", "min_epochs") if k in changes}
        data = self.dump() | changes
        data["budget"] = self.budget.model_dump() | budget
        if budget.get("epochs") and "min_epochs" not in budget:
            data["budget"]["min_epochs"] = min(data["budget"]["min_epochs"], budget["epochs"])
        where = self.path or self.name
        return _validate(data, f"{where} with labels {changes['labels']!r}" if "labels" in changes else where)

    # -- identity and output ------------------------------------------------------------------
    def dump(self, **kwargs: Any) -> dict[str, Any]:
        """`model_dump` without the unset optional fields (None), but keeping a parameter fixed at
        None (`weights: null`), which is a value, not an absence."""
        data = self.model_dump(exclude_none=True, **kwargs)
        for name, param in self.params.items():
            if isinstance(param, FixedParam) and param.value is None and name in data.get("params", {}):
                data["params"][name]["value"] = None
        return data

    def fingerprint(self) -> str:
        """A short hash of what the space searches; a study remembers it to refuse another space."""
        data = self.model_dump(mode="json", exclude={"description", "source", "budget", "path"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        data = self.dump(mode="json", exclude={"path"})
        data["params"] = {
            n: (p["value"] if p.get("type") == "fixed" and "when" not in p else p)
            for n, p in data.get("params", {}).items()
        }
        return yaml.safe_dump(data, sort_keys=False)

    def _where(self) -> str:
        return self.path or f"space {self.name!r}"


# -- loading ------------------------------------------------------------------------------------


def list_spaces(directory: Path = SPACES_DIR) -> dict[str, Path]:
    """Names of the shipped spaces and their files."""
    return {p.stem: p for p in sorted(directory.glob("*.yaml"))}


def find_space(name_or_path: str | os.PathLike) -> Path:
    """A space name (spaces/NAME.yaml) or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise SpaceError(f"space file {candidate} does not exist")
        return candidate
    known = list_spaces()
    if str(name_or_path) not in known:
        raise SpaceError(
            f"unknown space {str(name_or_path)!r}; known spaces: {', '.join(known) or '(none)'} "
            f"(or give a path to a YAML file)"
        )
    return known[str(name_or_path)]


def load_space(name_or_path: str | os.PathLike) -> Space:
    """Load and validate a space by name or path; raise SpaceError naming the file and the fix."""
    path = find_space(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpaceError(f"{path}: a space is a YAML mapping with 'model' and 'params'; got {type(data).__name__}")
    data.setdefault("name", path.stem)
    return _validate(data, str(path))


def space_from_dict(data: dict[str, Any], where: str = "<dict>") -> Space:
    """Validate a space given as a mapping (as stored with a study)."""
    return _validate(dict(data), where)


def _validate(data: dict[str, Any], where: str) -> Space:
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise SpaceError(f"{where}: 'params' must be a mapping of name to parameter")
    data["params"] = {
        n: (p if isinstance(p, dict) and "type" in p else {"type": "fixed", "value": p})
        for n, p in params.items()
    }
    data["path"] = where
    try:
        space = Space.model_validate(data)
    except ValidationError as exc:
        raise SpaceError(f"{where}: " + "; ".join(_describe(e) for e in exc.errors())) from None
    _check_references(space, where)
    return space


def _describe(error: dict[str, Any]) -> str:
    loc = [str(x) for x in error["loc"] if x not in ("float", "int", "categorical", "bool", "fixed")]
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "union_tag_invalid":
        msg = f"unknown type {error['input'].get('type')!r}; use float, int, categorical, bool or fixed"
    if error["type"] == "extra_forbidden":
        msg = "unknown field; check its spelling"
    if loc[:1] == ["params"] and len(loc) >= 2:
        return f"parameter {loc[1]!r}" + (f" field {'.'.join(loc[2:])!r}" if loc[2:] else "") + f": {msg}"
    return f"field {'.'.join(loc)!r}: {msg}"


def _check_references(space: Space, where: str) -> None:
    from fer_models import UnknownModelError, builder_defaults

    try:
        accepted = builder_defaults(space.model)
    except UnknownModelError as exc:
        raise SpaceError(f"{where}: field 'model': {exc}") from None
    from search.data.labels import LabelMap
    from search.data.schema import DataError

    try:  # here, not when the data loads: by then a study of this space may already be in the storage
        LabelMap.from_spec(space.labels)
    except DataError as exc:
        raise SpaceError(f"{where}: field 'labels': {exc}") from None
    seen: list[str] = []
    for name, p in space.params.items():
        if name in RESERVED:
            raise SpaceError(f"{where}: parameter {name!r} is set by fer-search itself; remove it")
        if name not in accepted and name not in TRAINING_DEFAULTS:
            raise SpaceError(
                f"{where}: parameter {name!r} is not accepted by the {space.model} builder "
                f"({', '.join(k for k in accepted if k not in RESERVED)}) nor a training setting "
                f"({', '.join(TRAINING_DEFAULTS)})"
            )
        for parent in p.parents():
            if parent not in space.params:
                raise SpaceError(f"{where}: parameter {name!r} has a condition on unknown parameter {parent!r}")
            if parent not in seen:
                raise SpaceError(f"{where}: parameter {name!r} depends on {parent!r}; list {parent!r} before it")
        if name in _SETTING_RULES:
            _check_setting(where, name, p)
        if isinstance(p, FloatParam) and p.ranges is not None:
            parent = space.params[p.depends_on]  # type: ignore[index]
            options = parent.choices if isinstance(parent, CategoricalParam) else [parent.default]
            missing = [str(o) for o in options if str(o) not in p.ranges]
            if missing:
                raise SpaceError(f"{where}: parameter {name!r} has no range for {p.depends_on}={', '.join(missing)}")
        seen.append(name)
    try:
        values = space.defaults()
    except Exception as exc:  # a default that is not a valid choice shows up here
        raise SpaceError(f"{where}: the default point is invalid: {exc}") from None
    for name, value in values.items():
        space.validate_value(name, value, values)


def _check_setting(where: str, name: str, p: Any) -> None:
    """Every value a training setting can take must be one the objective accepts."""
    rule, wanted = _SETTING_RULES[name]
    if isinstance(p, CategoricalParam):
        values = p.choices
    elif isinstance(p, FixedParam):
        values = [p.value]
    elif isinstance(p, BoolParam):
        values = [True, False]
    elif isinstance(p, FloatParam) and p.ranges is not None:
        values = [v for r in p.ranges.values() for v in (r.low, r.high)]
    else:
        values = [p.low, p.high]
    bad = [v for v in values if not rule(v)]
    if bad:
        raise SpaceError(f"{where}: parameter {name!r} can take {bad[0]!r}, but it must be {wanted}")


def _check_range(low: float, high: float, log: bool, step: float | None, default: float | None) -> None:
    if low > high:
        raise ValueError(f"low <= high must hold, but got low={low}, high={high}; swap them")
    if log and low <= 0:
        raise ValueError(f"'log: true' needs low > 0, but got low={low}")
    if step is not None:
        if step <= 0:
            raise ValueError(f"step must be > 0, but got {step}")
        n = (high - low) / step
        if not math.isclose(n, round(n), abs_tol=1e-9):
            raise ValueError(f"the range [{low}, {high}] is not a whole number of steps of {step}")
    if default is not None and not low <= default <= high:
        raise ValueError(f"default {default} is outside [{low}, {high}]")


def _midpoint(low: float, high: float, log: bool) -> float:
    return math.sqrt(low * high) if log else (low + high) / 2
