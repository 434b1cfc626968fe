"""`python -m search.report --study NAME`: the study's leaderboard as one HTML file that works offline.

results/<study>/leaderboard.html holds a sortable table of every trial, the plots (plotly.js is
bundled once, inline) and notes on best values at the edge of their range. It only reads the
storage, so it can run while a search is still going. Every string from the study is escaped.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from search import records
from search.cli import UsageError, fail

FIXED_COLUMNS = ("rank", "trial", "driver", "state", "objective", "val_macro_f1")


def write_report(study: optuna.Study, results_dir: Path, *, storage_label: str) -> Path:
    """Write results_dir/<study>/leaderboard.html and return its path."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    from search.plots import study_figures

    frame = records.trials_frame(study)
    parts = [_header(study, frame, storage_label), _table(frame), "<h2>Plots</h2>"]
    for key, title, fig in study_figures(study, frame) if len(frame) else []:
        parts.append(f'<section class="plot" id="section-{key}"><h3>{_e(title)}</h3>')
        if isinstance(fig, str):
            parts.append(f'<p class="missing">{_e(fig)}</p>')
        else:
            parts.append(pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"plot-{key}",
                                     config={"displaylogo": False, "responsive": True}))
        parts.append("</section>")
    page = _PAGE.format(title=_e(f"fer-search: {study.study_name}"), css=_CSS, plotlyjs=get_plotlyjs(),
                        body="\n".join(parts), sort_js=_SORT_JS)
    out = Path(results_dir) / study.study_name / "leaderboard.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)  # a browser or another worker never sees half a page
    return out


# -- page parts ---------------------------------------------------------------------------------


def _header(study: optuna.Study, frame: pd.DataFrame, storage_label: str) -> str:
    try:
        space = records.study_space(study)
    except ValueError as exc:
        space, space_note = None, str(exc)
    counts = frame["state"].value_counts().to_dict() if len(frame) else {}
    by_state = ", ".join(f"{n} {state.lower()}" for state, n in counts.items())
    facts = {
        "study": study.study_name,
        "space": study.user_attrs.get("space_name") or (space.name if space else "unknown"),
        "model": space.model if space else "unknown",
        "storage": storage_label,
        "trials": f"{len(frame)} ({by_state})" if counts else "none yet",
    }
    notes: list[str] = [] if space else [space_note]
    try:
        best = records.best_trial(study)
    except ValueError:
        facts["best"] = "no complete trial yet"
    else:
        facts["best"] = f"trial {best.number}: validation accuracy {best.value:.4f}"
        if space is not None:
            notes += _edge_notes(space, best.user_attrs.get("config") or best.params)
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts.items())
    out = [f"<h1>{_e(study.study_name)}</h1>", f'<table class="facts">{rows}</table>']
    if notes:
        out.append('<div class="notes"><h2>Notes</h2><ul>' + "".join(f"<li>{_e(n)}</li>" for n in notes)
                   + "</ul></div>")
    return "\n".join(out)


def _edge_notes(space: Any, config: dict[str, Any]) -> list[str]:
    try:
        return records.edge_warnings(space, config)
    except (KeyError, TypeError, ValueError) as exc:  # a config that no longer fits the space
        return [f"could not check the best configuration against the space's ranges: {exc!r}"]


def _table(frame: pd.DataFrame) -> str:
    if not len(frame):
        return "<p>No trials yet.</p>"
    frame = frame.copy()
    frame["partial"] = [_best_reached(h) for h in frame["history"]]
    complete = frame[frame["state"] == "COMPLETE"].sort_values(["value", "number"], ascending=[False, True])
    frame["rank"] = pd.Series(range(1, len(complete) + 1), index=complete.index)
    frame = frame.sort_values(["rank", "partial", "number"], ascending=[True, False, True], na_position="last")
    params = [c for c in frame.columns if c.startswith("params_")]
    head = [*FIXED_COLUMNS, *(c.removeprefix("params_") for c in params), "epochs run", "duration", "fail reason"]
    lines = ['<table class="trials sortable" id="trials"><thead><tr>'
             + "".join(f'<th title="click to sort">{_e(h)}</th>' for h in head) + "</tr></thead><tbody>"]
    for row in frame.to_dict("records"):
        cells = [
            _cell(int(row["rank"]) if _num(row["rank"]) else None),
            _cell(row["number"], f"{row['number']}" + (' <span class="badge">default</span>'
                                                        if row["is_default"] else ""), raw=True),
            _cell(_text(row["driver"])),
            _cell(row["state"], row["state"].lower()),
            _objective_cell(row),
            _cell(row["val_macro_f1"], _fmt(row["val_macro_f1"])),
            *(_cell(row[c], _fmt(row[c])) for c in params),
            _cell(row["epochs_run"], _fmt(row["epochs_run"])),
            _cell(row["duration_s"], _duration(row["duration_s"])),
            _cell(_text(row["fail_reason"]), f'<span class="reason">{_e(_text(row["fail_reason"]))}</span>',
                  raw=True),
        ]
        cls = f'state-{row["state"].lower()}' + (" default" if row["is_default"] else "")
        lines.append(f'<tr class="{_e(cls)}">' + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    legend = ('<p class="legend">Objective: validation accuracy (PublicTest). <em>partial</em> = best '
              'validation accuracy a pruned, running or failed trial reached before it stopped. The row '
              'marked <span class="badge">default</span> is the seed\'s configuration. Click a column '
              'header to sort.</p>')
    return "<h2>Trials</h2>" + legend + '<div class="scroll">' + "\n".join(lines) + "</div>"


def _objective_cell(row: dict[str, Any]) -> str:
    if row["state"] == "COMPLETE" and _num(row["value"]):
        return _cell(row["value"], f"{row['value']:.4f}")
    if _num(row["partial"]):
        return _cell(row["partial"], f'{row["partial"]:.4f} <span class="partial">partial</span>', raw=True)
    return _cell("", "")


def _cell(sort_key: Any, text: Any = None, *, raw: bool = False) -> str:
    key = "" if _missing(sort_key) else sort_key
    shown = (text if raw else _e(text)) if text is not None else _e(key)
    return f'<td data-v="{_e(key)}">{shown}</td>'


def _best_reached(history_json: str) -> float:
    values = [h.get("val_accuracy") for h in json.loads(history_json or "[]")]
    values = [v for v in values if _num(v)]
    return max(values) if values else math.nan


def _fmt(v: Any) -> str:
    if _missing(v):
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.0f}" if v.is_integer() and abs(v) >= 1 else f"{v:.4g}"
    return str(v)


def _duration(seconds: Any) -> str:
    if not _num(seconds):
        return ""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def _text(v: Any) -> str:
    return "" if _missing(v) else str(v)


def _missing(v: Any) -> bool:
    # pandas fills a parameter a trial does not have (momentum under adam) with NaN or NA
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{css}</style>
<script type="text/javascript">{plotlyjs}</script>
</head><body>
{body}
<script>{sort_js}</script>
</body></html>
"""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table.facts th { text-align: left; padding-right: 1em; }
table.trials { border-collapse: collapse; font-size: 13px; }
table.trials th, table.trials td { border: 1px solid #ccc; padding: 2px 6px; white-space: nowrap; }
table.trials th { background: #eee; cursor: pointer; position: sticky; top: 0; }
table.trials th.asc::after { content: " \\25B2"; } table.trials th.desc::after { content: " \\25BC"; }
tr.default td { background: #fff6d5; font-weight: 600; }
tr.state-pruned td { color: #666; } tr.state-fail td { color: #a00; }
.badge { background: #e8a400; color: white; border-radius: 3px; padding: 0 4px; font-size: 11px; }
.partial { color: #888; font-style: italic; font-size: 11px; }
.reason { white-space: normal; display: inline-block; max-width: 40em; }
.notes { background: #fff3f3; border-left: 4px solid #d62728; padding: 0.2em 1em; }
.missing { color: #888; font-style: italic; }
section.plot { margin-top: 1.5em; }
.scroll { overflow-x: auto; max-height: 80vh; }
"""

# Sort on header click: numbers by value, text alphabetically, blanks always last.
_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(asc ? "asc" : "desc");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(r) { var v = r.cells[col].getAttribute("data-v"); var n = Number(v);
        return v === "" ? null : (isNaN(n) ? v.toLowerCase() : n); }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return (x === null) - (y === null); }
        if (typeof x !== typeof y) { x = String(x); y = String(y); }
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


# -- command line -------------------------------------------------------------------------------


def open_existing_study(storage_url: str | None, study_name: str, results_dir: Path) -> tuple[optuna.Study, str]:
    """Load a study for reading (no heartbeats); return it and the redacted storage label.

    Raises:
        UsageError: the storage file is missing or holds no study of that name (lists those it holds).
        StorageError: the storage cannot be opened.
    """
    from search.storage import open_storage, redact, resolve_url, study_names

    url = resolve_url(storage_url, results_dir)
    label = redact(url)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise UsageError(f"no study storage at {label}: run `python -m search.run` first, or pass "
                         f"--storage URL / --results DIR")
    storage = open_storage(url, heartbeat=None)
    names = study_names(storage)
    if study_name not in names:
        raise UsageError(f"unknown study {study_name!r} in {label}; studies there: "
                         f"{', '.join(sorted(names)) or '(none)'}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=study_name, storage=storage), label


def add_study_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="study name (the space name unless --study-name was given)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: $OPTUNA_STORAGE, "
                   "else sqlite:///RESULTS/optuna.db)")
    p.add_argument("--results", metavar="DIR", type=Path, default=Path("results"),
                   help="results folder (default: results/)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.report", description="Write a study's leaderboard "
                                "(results/<study>/leaderboard.html); safe while the search runs.")
    add_study_flags(p)
    args = p.parse_args(argv)
    from search.storage import StorageError

    try:
        study, label = open_existing_study(args.storage, args.study, args.results)
        path = write_report(study, args.results, storage_label=label)
    except (UsageError, StorageError) as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"cannot write the leaderboard under {args.results}: {exc}; pass --results DIR")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
