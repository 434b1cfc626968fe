"""The leaderboard: every trial listed, strings escaped, plots present, the CLI, a real browser."""
from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from plotly.offline import get_plotlyjs

from search import plots, records
from search.optuna_driver import open_study
from search.optuna_sampling import suggest
from search.report import main, write_report
from search.space import load_space

REPO = Path(__file__).resolve().parent.parent
XSS = "<script>alert(1)</script>"
CHROMIUM = Path("/usr/bin/chromium")


def _add(study, space, values, state, curve, *, driver="optuna", start, seconds=60.0, **attrs):
    """Add a finished trial as a driver would leave it: params, config, history, metrics."""
    fixed = optuna.trial.FixedTrial(space.defaults() | values)
    config = suggest(fixed, space) | attrs.pop("config_override", {})
    history = [{"loss": 1.5 - 0.1 * i, "accuracy": v, "val_loss": 1.6 - 0.1 * i, "val_accuracy": v,
                "seconds": seconds / len(curve)} for i, v in enumerate(curve)]
    best = [max(curve[: i + 1]) for i in range(len(curve))]
    user_attrs = {"driver": driver, "config": config, "history": history, **attrs}
    if state == TrialState.COMPLETE:
        user_attrs["metrics"] = {"val_accuracy": best[-1], "val_loss": 1.2, "val_macro_f1": best[-1] - 0.05,
                                 "best_epoch": curve.index(best[-1]) + 1, "epochs_run": len(curve)}
    trial = optuna.trial.create_trial(
        state=state,
        value=best[-1] if state == TrialState.COMPLETE else None,
        params=fixed.params, distributions=fixed.distributions, user_attrs=user_attrs,
        intermediate_values={i + 1: b for i, b in enumerate(best)},
    )
    trial.datetime_start = start
    trial.datetime_complete = None if state == TrialState.RUNNING else start + dt.timedelta(seconds=seconds)
    study.add_trial(trial)


def build_study(tmp_path: Path, name: str = "cnn", *, two_drivers: bool = True) -> tuple[optuna.Study, str]:
    """A small study in a SQLite file: the default point, complete, pruned, failed and running trials,
    two drivers, and `<script>` in a parameter value and a fail reason."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path}/s.db"
    space = load_space("baseline_cnn")
    study = open_study(space, study_name=name, storage=optuna.storages.RDBStorage(url),
                       sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner())
    t = study.ask()  # the enqueued default point, as the driver runs it
    config = suggest(t, space)
    for k, v in {"driver": "optuna", "config": config, "history": [
            {"val_accuracy": a} for a in (0.25, 0.31, 0.33)], "metrics": {"val_macro_f1": 0.28, "epochs_run": 3}
                 }.items():
        t.set_user_attr(k, v)
    for step, v in enumerate((0.25, 0.31, 0.33), start=1):
        t.report(v, step)
    study.tell(t, 0.33)
    at = [dt.datetime.now() - dt.timedelta(minutes=16 - 2 * i) for i in range(1, 8)]
    other = "kerastuner" if two_drivers else "optuna"
    _add(study, space, {"dropout": 0.45, "learning_rate": 1e-3}, TrialState.COMPLETE,
         [0.28, 0.36, 0.41, 0.40], start=at[0], seconds=95)                                  # 1: best
    _add(study, space, {"optimizer": "sgd", "learning_rate": 0.02, "momentum": 0.9}, TrialState.COMPLETE,
         [0.22, 0.30, 0.35], start=at[1], seconds=70)                                        # 2
    _add(study, space, {"dropout": 0.2}, TrialState.PRUNED, [0.17, 0.20, 0.22], start=at[2], seconds=40)  # 3
    _add(study, space, {"batch_size": 128}, TrialState.FAIL, [0.19], start=at[3], seconds=10,
         fail_reason=f"ValueError: {XSS} broke the model")                                   # 4
    _add(study, space, {"dense_units": 1024, "base_filters": 32}, TrialState.COMPLETE, [0.30, 0.37, 0.38],
         driver=other, start=at[4], seconds=120, config_override={"optimizer": XSS})        # 5
    _add(study, space, {"zoom": 0.1}, TrialState.PRUNED, [0.15, 0.18, 0.21], driver=other, start=at[5])  # 6
    _add(study, space, {"shift": 0.05}, TrialState.RUNNING, [0.2, 0.26], start=at[6])      # 7
    return study, url


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, str, Path, str]:
    tmp = tmp_path_factory.mktemp("report")
    study, url = build_study(tmp)
    path = write_report(study, tmp / "results", storage_label="sqlite:///s.db")
    return study, url, path, path.read_text()


def _rows(page: str) -> list[str]:
    body = page.split('<table class="trials sortable" id="trials">', 1)[1].split("</table>", 1)[0]
    return re.findall(r"<tr class=\"[^\"]*\">.*?</tr>", body, flags=re.S)


def test_every_trial_is_a_row_ranked_and_marked(built) -> None:
    study, _, path, page = built
    assert path.name == "leaderboard.html" and path.parent.name == "cnn"
    rows = _rows(page)
    keys = [re.findall(r'<td data-v="([^"]*)">', r) for r in rows]  # sort keys: rank, number, ...
    numbers = [int(k[1]) for k in keys]
    assert sorted(numbers) == [t.number for t in study.trials] == list(range(8))
    assert numbers[:4] == [1, 5, 2, 0]  # complete trials first, best first
    assert [k[0] for k in keys] == ["1", "2", "3", "4", "", "", "", ""]
    default = [r for r in rows if 'class="state-complete default"' in r]
    assert len(default) == 1 and '<td data-v="0">0 <span class="badge">default</span>' in default[0]
    pruned = next(r for r in rows if "state-pruned" in r and '<td data-v="3">' in r)
    assert '0.2200 <span class="partial">partial</span>' in pruned
    running = next(r for r in rows if "state-running" in r)
    assert "0.2600" in running and "partial" in running


def test_header_counts_best_and_edge_note(built) -> None:
    _, _, _, page = built
    assert "<td>baseline_cnn</td>" in page and "<td>sqlite:///s.db</td>" in page
    assert "8 (4 complete, 2 pruned, 1 fail, 1 running)" in page
    assert "trial 1: validation accuracy 0.4100" in page
    assert "dropout = 0.45 sits at the high edge of [0.15, 0.45]" in page


def test_every_study_string_is_escaped(built) -> None:
    _, _, _, page = built
    assert XSS not in page
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"ValueError: {escaped} broke the model" in page  # the fail reason
    assert f'<td data-v="{escaped}">{escaped}</td>' in page  # the parameter value


def test_plotly_bundled_once_no_network(built) -> None:
    _, _, _, page = built
    bundle = get_plotlyjs()
    assert page.count(bundle) == 1
    ours = page.replace(bundle, "")  # the bundle itself names map-tile servers no figure here uses
    assert not re.search(r"https?://", ours) and not re.search(r"<script[^>]+src=", ours)
    for key in ("history", "learning-curves", "parallel", "importance", "slice-1", "timeline", "drivers"):
        assert f'id="plot-{key}"' in page, key


def test_learning_curves_show_every_trial_and_where_pruned_ones_stopped(built) -> None:
    study, _, _, _ = built
    fig = plots.learning_curves(records.trials_frame(study))
    by_name = {tr.name: tr for tr in fig.data}
    assert len(fig.data) == len(study.trials)
    pruned = by_name["trial 3 pruned"]
    assert pruned.line.dash == "dash" and pruned.marker.symbol == "x"
    assert list(pruned.y) == [0.17, 0.20, 0.22] and list(pruned.marker.size)[-1] > 0
    assert by_name["trial 0 (default) complete"].line.width > by_name["trial 1 complete"].line.width


def test_driver_comparison_lines_per_driver(built) -> None:
    study, _, _, _ = built
    fig = plots.driver_comparison(records.trials_frame(study))
    shown = {tr.name: list(tr.y) for tr in fig.data if tr.showlegend is not False}
    assert set(shown) == {"optuna", "kerastuner"}
    assert shown["optuna"][-1] == pytest.approx(0.41) and shown["kerastuner"][-1] == pytest.approx(0.38)


def test_single_driver_and_too_few_trials(tmp_path: Path) -> None:
    space = load_space("baseline_cnn")
    study = open_study(space, study_name="tiny", storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/t.db"),
                       sampler=optuna.samplers.RandomSampler(), pruner=optuna.pruners.NopPruner())
    empty = write_report(study, tmp_path, storage_label="x").read_text()  # only the waiting default point
    assert "state-waiting" in empty and "no complete trial yet" in empty
    _add(study, space, {}, TrialState.COMPLETE, [0.3, 0.35], start=dt.datetime.now())
    page = write_report(study, tmp_path, storage_label="x").read_text()
    assert 'id="plot-history"' in page and 'id="plot-drivers"' not in page
    assert 'id="plot-importance"' not in page and "not enough trials yet: importances need" in page


def test_cli_writes_report_and_rejects_unknown_study(built, tmp_path: Path, capsys) -> None:
    _, url, _, _ = built
    assert main(["--study", "cnn", "--storage", url, "--results", str(tmp_path)]) == 0
    out = Path(capsys.readouterr().out.strip())
    assert out == tmp_path / "cnn" / "leaderboard.html" and out.stat().st_size > 1_000_000
    assert main(["--study", "nope", "--storage", url, "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown study 'nope'" in err and "studies there: cnn" in err
    assert main(["--study", "cnn", "--results", str(tmp_path / "empty")]) == 2
    assert "no study storage at sqlite:///" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "optuna.db").exists()  # a typo must not create an empty storage


def test_cli_runs_as_module_without_tensorflow(built, tmp_path: Path) -> None:
    _, url, _, _ = built
    code = ("import sys; from search import report, export\n"
            f"assert report.main(['--study', 'cnn', '--storage', {url!r}, '--results', {str(tmp_path)!r}]) == 0\n"
            f"assert export.main(['--study', 'cnn', '--storage', {url!r}, '--results', {str(tmp_path)!r}]) == 0\n"
            "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    helped = subprocess.run([sys.executable, "-m", "search.report", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert helped.returncode == 0 and "--study" in helped.stdout


# -- a real browser ---------------------------------------------------------------------------


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
             "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--virtual-time-budget=5000"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_leaderboard_renders_offline_in_headless_chromium(built, tmp_path: Path) -> None:
    _, _, path, page = built
    dom = _chromium(tmp_path, "--dump-dom", path.as_uri()).stdout
    plot_ids = re.findall(r'<div id="(plot-[\w-]+)" class="plotly-graph-div', page)
    assert len(plot_ids) >= 8 and "plot-learning-curves" in plot_ids
    drawn = [re.search(r'<div id="(plot-[\w-]+)"', part).group(1)
             for part in dom.split('<section class="plot"')[1:] if 'class="main-svg"' in part]
    assert drawn == plot_ids  # plotly drew an SVG in every figure's div
    assert len(re.findall(r'class="(?:scatterlayer|parcoords|barlayer)', dom)) >= len(plot_ids)
    # The table sorts on header clicks: a copy of the page clicks and writes the first row's trial.
    probe = tmp_path / "probe.html"
    head, tail = page.rsplit("</body>", 1)
    probe.write_text(head + """<script>
      const th = name => [...document.querySelectorAll('#trials th')].find(h => h.textContent === name);
      const first = () => document.querySelector('#trials tbody tr').cells[1].getAttribute('data-v');
      const seen = [];
      th('trial').click(); seen.push(first()); th('trial').click(); seen.push(first());
      th('objective').click(); seen.push(first());
      document.title = 'sorted:' + seen.join(',');
    </script></body>""" + tail)
    probed = _chromium(tmp_path, "--dump-dom", probe.as_uri()).stdout
    assert "<title>sorted:0,7,4</title>" in probed  # trial up, trial down, objective up (partial 0.19)
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,3000", path.as_uri())
    assert shot.exists() and shot.stat().st_size > 50_000
