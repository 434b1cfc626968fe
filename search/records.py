"""The common trial table: one flat row per trial, whichever driver ran it, read from the storage.

Both drivers keep their trials in the Optuna storage with the same user attributes (`driver`,
`config`, `metrics`, `history`, `fail_reason`), so reports, exports and final training read one
table and never need to know which driver produced a trial.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from search.space import CategoricalParam, FloatParam, IntParam, Space

METRIC_COLUMNS = ("val_loss", "val_macro_f1", "val_balanced_accuracy", "best_epoch", "epochs_run")


def epochs_run(t: optuna.trial.FrozenTrial) -> int:
    """Epochs the trial trained: as its metrics say, else as long as its curve."""
    history = t.user_attrs.get("history") or t.intermediate_values
    return t.user_attrs.get("metrics", {}).get("epochs_run", len(history))


def trial_row(study_name: str, t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One trial as a flat row: identity, state, objective, metrics, every parameter, history."""
    attrs = t.user_attrs
    config = attrs.get("config") or t.params
    history = attrs.get("history") or [{"val_accuracy": v} for _, v in sorted(t.intermediate_values.items())]
    metrics = attrs.get("metrics", {})
    row: dict[str, Any] = {
        "study": study_name,
        "driver": attrs.get("driver", "optuna"),
        "number": t.number,
        "state": t.state.name,
        "value": t.value,
        "is_default": bool(attrs.get("default_point", False)),
        **{k: metrics.get(k) for k in METRIC_COLUMNS},
        "epochs_run": epochs_run(t),
        "duration_s": t.duration.total_seconds() if t.duration else None,
        "datetime_start": t.datetime_start,
        "fail_reason": attrs.get("fail_reason"),
        "retry_of": t.system_attrs.get("failed_trial"),
    }
    row.update({f"params_{k}": v for k, v in config.items()})
    row["history"] = json.dumps(history)
    return row


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """All trials of a study as the common table, in trial-number order. Surplus trials (started by
    a worker for a place another worker took at the same moment, and never run) are left out."""
    rows = [trial_row(study.study_name, t) for t in study.get_trials(deepcopy=False)
            if not t.user_attrs.get("surplus")]
    return pd.DataFrame(rows)


def study_space(study: optuna.Study) -> Space:
    """The space a study was created with (stored in its user attributes)."""
    data = study.user_attrs.get("space")
    if data is None:
        raise ValueError(f"study {study.study_name!r} was not created by fer-search: it stores no space")
    # Checked against its model builder when the study was created; space_from_dict would check
    # again and import Keras and TensorFlow, which reports and exports must not wait for.
    params = {name: ({"value": None} | p if p.get("type") == "fixed" else p)  # studies stored before
              for name, p in data.get("params", {}).items()}                # Space.dump dropped a null value
    return Space.model_validate({**data, "params": params, "path": f"study {study.study_name!r}"})


def best_trial(study: optuna.Study, rank: int = 1) -> optuna.trial.FrozenTrial:
    """The rank-th best complete trial (1 = best)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if not done:
        raise ValueError(f"study {study.study_name!r} has no complete trial yet")
    done.sort(key=lambda t: (-t.value, t.number))
    if not 1 <= rank <= len(done):
        raise ValueError(f"rank {rank} is out of range: study {study.study_name!r} has {len(done)} complete trials")
    return done[rank - 1]


def export_config(study: optuna.Study, trial: optuna.trial.FrozenTrial, storage_label: str) -> Space:
    """The trial's full configuration as a space of fixed values, recording where it came from."""
    space = study_space(study)
    config = trial.user_attrs.get("config") or trial.params
    source = {
        "study": study.study_name,
        "trial": trial.number,
        "driver": trial.user_attrs.get("driver", "optuna"),
        "val_accuracy": trial.value,
        "storage": storage_label,
    }
    about = f"Trial {trial.number} of study {study.study_name!r}"
    if trial.value is not None:
        epochs = epochs_run(trial)
        about += f": validation accuracy {trial.value:.4f} after {epochs} epoch{'s' * (epochs != 1)}, every value fixed"
    description = f"{about}. The space it was drawn from: {space.description}"
    return space.fixed(config, source=source).model_copy(
        update={"name": study.study_name, "path": None, "description": description}
    )


def edge_warnings(space: Space, config: dict[str, Any]) -> list[str]:
    """Parameters whose value sits on the edge of its range: the range may be too narrow."""
    notes = []
    for name, p in space.params.items():
        if name not in config:
            continue
        value = config[name]
        if isinstance(p, (FloatParam, IntParam)):
            low, high, _ = p.bounds(config) if isinstance(p, FloatParam) else (p.low, p.high, None)
            if low == high or value == low == 0:  # 0 is "off" (no zoom, no shift): no range lies below it
                continue
            span = (math.log(high) - math.log(low)) if p.log else (high - low)
            pos = (math.log(value) - math.log(low)) / span if p.log else (value - low) / span
            if pos <= 0.02 or pos >= 0.98:
                edge = "low" if pos <= 0.02 else "high"
                notes.append(f"{name} = {value:g} sits at the {edge} edge of [{low:g}, {high:g}]; widen the range")
        elif isinstance(p, CategoricalParam) and all(isinstance(c, (int, float)) for c in p.choices):
            ordered = sorted(p.choices)  # type: ignore[type-var]
            if len(ordered) > 2 and value in (ordered[0], ordered[-1]):
                notes.append(f"{name} = {value} is the {'smallest' if value == ordered[0] else 'largest'} "
                             f"of its choices {ordered}; consider adding values beyond it")
    return notes


def write_outputs(study: optuna.Study, results_dir: Path, storage_label: str) -> dict[str, Path]:
    """Write trials.csv and (when a trial completed) best_config.yaml; return their paths."""
    out = Path(results_dir) / study.study_name
    out.mkdir(parents=True, exist_ok=True)
    paths = {"trials": out / "trials.csv"}
    trials_frame(study).to_csv(paths["trials"], index=False)
    try:
        best = best_trial(study)
    except ValueError:
        return paths
    paths["best_config"] = out / "best_config.yaml"
    paths["best_config"].write_text(export_config(study, best, storage_label).to_yaml())
    return paths
