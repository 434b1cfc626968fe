from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
REAL_FER = Path(os.environ.get("FER2013_PATH", REPO.parent / "shared" / "fer2013" / "fer2013.csv.gz"))


@pytest.fixture(scope="session")
def real_fer() -> Path:
    """The real FER2013 CSV (the integration tests need it; they are skipped only where it is absent)."""
    if not REAL_FER.exists():
        pytest.skip(f"FER2013 not found at {REAL_FER}; set FER2013_PATH")
    return REAL_FER


@pytest.fixture(scope="session")
def small_cnn() -> str:
    """The space the suite's searches run: baseline_cnn at a narrow width, so that a trial takes seconds
    (test_space.py checks that it differs from the shipped space in the widths alone)."""
    return str(Path(__file__).parent / "spaces" / "small_cnn.yaml")


@pytest.fixture(scope="session")
def fer_slice(real_fer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real FER2013 slice: 600 Training, 150 PublicTest and 150 PrivateTest rows.

    Rows are taken in file order from each split (the file is ordered Training, PublicTest,
    PrivateTest), so it is the same slice on every machine.
    """
    want = {"Training": 600, "PublicTest": 150, "PrivateTest": 150}
    kept = {k: [] for k in want}
    with gzip.open(real_fer, "rt") as f:
        header = f.readline()
        for line in f:
            usage = line.rstrip("\n").rsplit(",", 1)[-1]
            if len(kept[usage]) < want[usage]:
                kept[usage].append(line)
            if usage == "PrivateTest" and len(kept[usage]) >= want[usage]:
                break
    out = tmp_path_factory.mktemp("fer") / "fer2013_slice.csv"
    out.write_text(header + "".join(line for rows in kept.values() for line in rows))
    return out


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the FER2013 array cache of the tests out of the user's cache folder."""
    monkeypatch.setenv("FER_SEARCH_CACHE", str(tmp_path_factory.getbasetemp() / "fer-cache"))
