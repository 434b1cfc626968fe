"""Exporting a trial's configuration: it loads back as a space whose defaults are the trial's config."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from test_report import build_study  # the same small study: 4 complete, pruned, failed, running trials

from search import records
from search.export import main
from search.optuna_driver import open_study
from search.space import load_space


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, str]:
    return build_study(tmp_path_factory.mktemp("export"))


def test_best_config_round_trips(stored, tmp_path: Path, capsys) -> None:
    study, url = stored
    assert main(["--study", "cnn", "--storage", url, "--results", str(tmp_path)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == tmp_path / "cnn" / "best_config.yaml"
    best = study.trials[1]  # validation accuracy 0.41
    assert load_space(path).defaults() == best.user_attrs["config"]
    source = yaml.safe_load(path.read_text())["source"]
    assert source["study"] == "cnn" and source["trial"] == 1 and source["val_accuracy"] == pytest.approx(0.41)
    assert source["driver"] == "optuna" and source["storage"] == url
    epochs = records.epochs_run(best)
    assert epochs == len(best.intermediate_values) > 1
    assert load_space(path).description.startswith(
        f"Trial 1 of study 'cnn': validation accuracy 0.4100 after {epochs} epochs, every value fixed."
    )


def test_rank_two_is_the_second_best(stored, tmp_path: Path, capsys) -> None:
    study, url = stored
    assert main(["--study", "cnn", "--rank", "2", "--storage", url, "--results", str(tmp_path)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.name == "rank_2_config.yaml"
    source = yaml.safe_load(path.read_text())["source"]
    assert source["trial"] == 5 and source["driver"] == "kerastuner"  # 0.38, behind trial 1's 0.41
    assert load_space(path).defaults() == study.trials[5].user_attrs["config"]
    assert records.best_trial(study, 2).number == 5


def test_output_flag(stored, tmp_path: Path, capsys) -> None:
    _, url = stored
    out = tmp_path / "deep" / "mine.yaml"
    assert main(["--study", "cnn", "--rank", "3", "--storage", url, "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert yaml.safe_load(out.read_text())["source"]["trial"] == 2


@pytest.mark.parametrize("rank, message", [("0", "ranks start at 1"), ("5", "rank 5 is out of range"),
                                           ("x", "invalid int value")])
def test_bad_rank(stored, tmp_path: Path, capsys, rank: str, message: str) -> None:
    _, url = stored
    try:
        code = main(["--study", "cnn", "--rank", rank, "--storage", url, "--results", str(tmp_path)])
    except SystemExit as exc:  # argparse rejects a rank that is not a number
        code = exc.code
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "cnn").exists()


def test_unknown_study_and_no_complete_trial(stored, tmp_path: Path, capsys) -> None:
    _, url = stored
    assert main(["--study", "cmm", "--storage", url, "--results", str(tmp_path)]) == 2
    assert "unknown study 'cmm'" in capsys.readouterr().err
    empty_url = f"sqlite:///{tmp_path}/e.db"
    open_study(load_space("baseline_cnn"), study_name="fresh", storage=optuna.storages.RDBStorage(empty_url),
               sampler=optuna.samplers.RandomSampler(), pruner=optuna.pruners.NopPruner())
    assert main(["--study", "fresh", "--storage", empty_url, "--results", str(tmp_path)]) == 2
    assert "has no complete trial yet" in capsys.readouterr().err
