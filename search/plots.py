"""The leaderboard's figures: Optuna's own plots where they draw what is needed, ours for the rest.

`study_figures` gives each figure, or the sentence the page shows in its place when the study cannot
support it yet (`NotEnoughTrials`). Nothing here imports TensorFlow.
"""
from __future__ import annotations

import json
import math
import warnings
from typing import Any, Callable

import optuna
import pandas as pd
import plotly.graph_objects as go
from optuna.trial import TrialState
from plotly.subplots import make_subplots

SLICES_PER_FIGURE = 4
STATE_STYLE = {  # line dash and marker at the last epoch, per trial state
    "COMPLETE": ("solid", "circle"),
    "PRUNED": ("dash", "x"),
    "FAIL": ("dot", "x-open"),
    "RUNNING": ("dot", "triangle-right"),
}


class NotEnoughTrials(ValueError):
    """The study cannot support this plot yet; the message says what it needs."""


def study_figures(study: optuna.Study, frame: pd.DataFrame) -> list[tuple[str, str, go.Figure | str]]:
    """(id, title, figure or the reason it is missing) for every plot of the leaderboard."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots: list[tuple[str, str, Callable[[], go.Figure]]] = [
        ("history", "Optimization history (best so far)", lambda: _optuna_plot(
            optuna.visualization.plot_optimization_history, study, complete, need=1)),
        ("learning-curves", "Learning curves: validation accuracy per epoch", lambda: learning_curves(frame)),
        ("parallel", "Parallel coordinates", lambda: _optuna_plot(
            optuna.visualization.plot_parallel_coordinate, study, complete, need=1)),
        ("importance", "Parameter importances", lambda: _importances(study, complete)),
        *_slice_plots(study, complete),
        ("timeline", "Timeline of trials", lambda: _optuna_plot(
            optuna.visualization.plot_timeline, study, study.trials, need=1)),
    ]
    if len(frame) and frame["driver"].nunique() > 1:
        plots.append(("drivers", "Drivers compared: best so far", lambda: driver_comparison(frame)))
    out: list[tuple[str, str, go.Figure | str]] = []
    for key, title, make in plots:
        try:
            fig = make()
        except NotEnoughTrials as exc:
            out.append((key, title, str(exc)))
        except Exception as exc:  # one plot Optuna cannot draw must not cost the whole leaderboard
            out.append((key, title, f"could not draw this plot: {type(exc).__name__}: {exc}"))
        else:
            fig.update_layout(title=None, width=None, autosize=True, margin=dict(t=30, b=40, l=60, r=20))
            out.append((key, title, fig))
    return out


def _optuna_plot(plot: Callable[..., go.Figure], study: optuna.Study, trials: list, need: int,
                 **kwargs: Any) -> go.Figure:
    if len(trials) < need:
        raise NotEnoughTrials(f"not enough trials yet: this plot needs {need} complete trial(s)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna flags its plot API as experimental
        return plot(study, **kwargs)


def _slice_plots(study: optuna.Study, complete: list) -> list[tuple[str, str, Callable[[], go.Figure]]]:
    # Optuna draws one 300-pixel panel per parameter in a row; a few per figure keep it on screen.
    names = sorted({n for t in complete for n in t.params})
    chunks = [names[i:i + SLICES_PER_FIGURE] for i in range(0, len(names), SLICES_PER_FIGURE)] or [[]]
    return [
        (f"slice-{i + 1}", "Slice plots" + (f": {', '.join(chunk)}" if chunk else ""),
         lambda chunk=chunk: _optuna_plot(optuna.visualization.plot_slice, study, complete, need=1,
                                          params=chunk))
        for i, chunk in enumerate(chunks)
    ]


def _importances(study: optuna.Study, complete: list) -> go.Figure:
    varying = {n for t in complete for n in t.params if len({repr(u.params.get(n)) for u in complete}) > 1}
    if len(complete) < 2 or not varying:
        raise NotEnoughTrials("not enough trials yet: importances need at least 2 complete trials "
                              "whose parameters differ")
    try:
        return _optuna_plot(optuna.visualization.plot_param_importances, study, complete, need=2)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        raise NotEnoughTrials(f"not enough trials yet to estimate importances ({exc})") from None


def learning_curves(frame: pd.DataFrame) -> go.Figure:
    """Validation accuracy per epoch of every trial; a pruned trial is dashed and ends in an X."""
    fig = go.Figure()
    for row in frame.itertuples(index=False):
        curve = [h.get("val_accuracy") for h in json.loads(row.history or "[]")]
        epochs = [i + 1 for i, v in enumerate(curve) if _number(v)]
        curve = [v for v in curve if _number(v)]
        if not curve:
            continue
        dash, symbol = STATE_STYLE.get(row.state, ("dot", "circle"))
        label = f"trial {row.number}" + (" (default)" if row.is_default else "") + f" {row.state.lower()}"
        sizes = [0] * (len(curve) - 1) + [10 if row.state != "COMPLETE" else 6]
        fig.add_trace(go.Scatter(
            x=epochs, y=curve, mode="lines+markers", name=label,
            line=dict(dash=dash, width=3 if row.is_default else 1.5),
            marker=dict(symbol=symbol, size=sizes),
            opacity=1.0 if row.state == "COMPLETE" else 0.6,
            hovertemplate=f"{label}<br>epoch %{{x}}<br>val accuracy %{{y:.4f}}<extra></extra>",
        ))
    if not fig.data:
        raise NotEnoughTrials("no trial has finished an epoch yet")
    fig.update_layout(xaxis=dict(title="epoch", dtick=1), yaxis_title="validation accuracy",
                      legend=dict(font=dict(size=10)))
    return fig


def driver_comparison(frame: pd.DataFrame) -> go.Figure:
    """Best-so-far objective per driver, against trial index and cumulative training time."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("vs trial index", "vs cumulative training time"))
    done = frame[frame["state"].isin(["COMPLETE", "PRUNED", "FAIL"])]
    for i, (driver, group) in enumerate(done.sort_values("number").groupby("driver", sort=True)):
        values = group["value"].where(group["state"] == "COMPLETE").astype(float)
        best = values.cummax().ffill()  # a pruned or failed trial keeps the best so far
        minutes = group["duration_s"].fillna(0).astype(float).cumsum() / 60
        color = _COLORS[i % len(_COLORS)]
        common = dict(mode="lines+markers", name=str(driver), legendgroup=str(driver), line=dict(color=color))
        fig.add_trace(go.Scatter(x=list(range(1, len(group) + 1)), y=best, **common), row=1, col=1)
        fig.add_trace(go.Scatter(x=minutes, y=best, showlegend=False, **common), row=1, col=2)
    fig.update_xaxes(title_text="trial index (per driver)", row=1, col=1)
    fig.update_xaxes(title_text="minutes of trials (cumulative)", row=1, col=2)
    fig.update_yaxes(title_text="best validation accuracy so far", row=1, col=1)
    return fig


_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
