from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from search.data import (
    EMOTIONS, LABEL_MAPS, USAGES, Augment, DataError, FERData, LabelMap, TrainingPipeline, load_fer2013,
    load_raw, make_dataset, resolve_data_path,
)
from search.data import cache, csv_source

HEADER = "emotion,pixels,Usage"
PER_CELL = 3  # images per (usage, emotion) in the tiny data set


def tiny_rows(per_cell: int = PER_CELL, seed: int = 0) -> list[tuple[int, np.ndarray, int]]:
    """(emotion, image, usage id) for every usage x emotion, ``per_cell`` random faces each."""
    rng = np.random.default_rng(seed)
    return [(e, rng.integers(0, 256, (48, 48), dtype=np.uint8), u)
            for u in range(3) for e in range(7) for _ in range(per_cell)]


def pixel_text(image: np.ndarray) -> str:
    return " ".join(map(str, image.ravel()))


def write_csv(path: Path, rows, header: str = HEADER, newline: str = "\n") -> Path:
    lines = [header]
    for e, p, u in rows:  # str fields are written as they are, to allow malformed ones
        lines.append(f"{e},{p if isinstance(p, str) else pixel_text(p)},"
                     f"{u if isinstance(u, str) else USAGES[u]}")
    data = (newline.join(lines) + newline).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_folders(root: Path, rows, *, prefixed: bool = True) -> Path:
    """Kaggle layout: Training rows in train/, the rest in test/, lossless PNGs."""
    for i, (e, image, u) in enumerate(rows):
        folder = root / ("train" if u == 0 else "test") / EMOTIONS[e]
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{USAGES[u]}_{i}.png" if prefixed else f"im{i}.png"
        Image.fromarray(image, mode="L").save(folder / name)
    return root


def sorted_split(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows in a canonical order, so two loaders that order files differently compare equal."""
    flat = images.reshape(len(images), -1)
    order = np.lexsort(np.column_stack([flat, labels]).T[::-1])
    return flat[order], labels[order]


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "tiny.csv", tiny_rows())


def load_error(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_raw(path, **kwargs)
    return str(info.value)


# --- finding the data -------------------------------------------------------------------------

def test_import_does_not_import_tensorflow() -> None:
    code = "import sys, search.data; sys.exit('tensorflow' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_resolve_data_path_without_path_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FER2013_PATH", raising=False)
    with pytest.raises(DataError, match=r"pass --data PATH or set FER2013_PATH"):
        resolve_data_path(None)


def test_resolve_data_path_names_missing_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=f"{missing}.*does not exist"):
        resolve_data_path(missing)
    monkeypatch.setenv("FER2013_PATH", str(missing))
    with pytest.raises(DataError, match=r"from FER2013_PATH\) does not exist"):
        resolve_data_path(None)


def test_resolve_data_path_env_and_folder_holding_the_csv(tiny_csv: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER2013_PATH", str(tiny_csv))
    assert resolve_data_path(None) == tiny_csv
    holder = tmp_path / "holder"
    holder.mkdir()
    write_csv(holder / "fer2013.csv.gz", tiny_rows(1))
    assert resolve_data_path(holder) == holder / "fer2013.csv.gz"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither train/ and test/ image folders nor fer2013.csv"):
        resolve_data_path(tmp_path / "empty")


# --- the CSV form ---------------------------------------------------------------------------------

def test_csv_loads_every_row_in_order(tmp_path: Path) -> None:
    rows = tiny_rows()
    raw = load_raw(write_csv(tmp_path / "t.csv", rows))
    assert raw.form == "csv" and len(raw) == len(rows)
    assert raw.images.dtype == np.uint8 and raw.images.shape == (len(rows), 48, 48)
    np.testing.assert_array_equal(raw.images, np.stack([r[1] for r in rows]))
    np.testing.assert_array_equal(raw.emotion, [r[0] for r in rows])
    np.testing.assert_array_equal(raw.usage, [r[2] for r in rows])
    assert raw.counts().tolist() == [[PER_CELL] * 7] * 3


def test_gzipped_crlf_and_loose_whitespace_csv_give_the_same_arrays(tmp_path: Path) -> None:
    rows = tiny_rows(1)
    plain = load_raw(write_csv(tmp_path / "a.csv", rows))
    gz = load_raw(write_csv(tmp_path / "b.csv.gz", rows, newline="\r\n"))
    # Leading zeros, doubled spaces, tabs and padded fields are harmless and accepted.
    loose = [(f" {e}", "  " + "\t".join(f"{v:03d}" for v in image.ravel()) + " ", f"{USAGES[u]} ")
             for e, image, u in rows]
    loosened = load_raw(write_csv(tmp_path / "c.csv", loose, header=" Emotion , pixels , usage"))
    for other in (gz, loosened):
        np.testing.assert_array_equal(other.images, plain.images)
        np.testing.assert_array_equal(other.emotion, plain.emotion)
        np.testing.assert_array_equal(other.usage, plain.usage)


def _bad_pixels(n: int) -> str:
    return " ".join(["7"] * n)


BAD_ROWS = [
    # (emotion, pixels, usage) placed on data row 3 (line 5), expected message pieces
    (("3", _bad_pixels(2303), "Training"), ["pixels has 2303 values", "expected 2304"]),
    (("3", _bad_pixels(2305), "Training"), ["pixels has 2305 values", "expected 2304"]),
    (("3", "7 7 7 x1 " + _bad_pixels(2300), "Training"), ["pixel 4 is 'x1', not an integer"]),
    (("3", "7 7.5 " + _bad_pixels(2302), "Training"), ["pixel 2 is '7.5', not an integer"]),
    (("3", "256 " + _bad_pixels(2303), "Training"), ["pixel 1 is 256, outside 0..255"]),
    (("3", "1 -3 " + _bad_pixels(2302), "Training"), ["pixel 2 is -3, outside 0..255"]),
    (("3", "1 1000 " + _bad_pixels(2302), "Training"), ["pixel 2 is 1000, outside 0..255"]),
    (("3", "1 2 " + "9" * 30 + " " + _bad_pixels(2301), "Training"), [f"pixel 3 is {'9' * 30}, outside"]),
    (("3", "", "Training"), ["pixels has 0 values"]),
    (("7", _bad_pixels(2304), "Training"), ["emotion is '7'", "integer 0..6", "6 neutral"]),
    (("2.0", _bad_pixels(2304), "Training"), ["emotion is '2.0'", "integer 0..6"]),
    (("", _bad_pixels(2304), "Training"), ["emotion is ''"]),
    (("3", _bad_pixels(2304), "Train"), ["Usage is 'Train'", "Training, PublicTest, PrivateTest"]),
    (("3", "7 7", "Training", "1"), ["line 5", "Expected 3 fields in line 5, saw 4"]),
]


@pytest.mark.parametrize("bad_row, expected", BAD_ROWS)
def test_bad_csv_row_names_file_line_expectation_and_fix(tmp_path: Path, bad_row, expected) -> None:
    rows = [(e, pixel_text(im), u) for e, im, u in tiny_rows(1)]
    rows.insert(3, bad_row[:3])
    path = write_csv(tmp_path / "bad.csv", rows)
    if len(bad_row) > 3:  # an extra field
        lines = path.read_text().splitlines()
        lines[4] += "," + bad_row[3]
        path.write_text("\n".join(lines) + "\n")
    message = load_error(path)
    assert message.startswith(f"{path}, line 5: " if len(bad_row) == 3 else f"{path}: ")
    for piece in expected:
        assert piece in message
    assert "Fix: " in message and len(message) < 400  # long values are cut short


def test_first_bad_line_is_reported_whatever_the_kind(tmp_path: Path) -> None:
    rows = [(e, pixel_text(im), u) for e, im, u in tiny_rows(2)]
    pixels_bad, emotion_bad = list(rows), list(rows)
    pixels_bad[10] = (3, _bad_pixels(5), "Training")
    pixels_bad[20] = ("9", _bad_pixels(2304), "Training")
    emotion_bad[10] = ("9", _bad_pixels(2304), "Training")
    emotion_bad[20] = (3, _bad_pixels(5), "Training")
    assert ", line 12: pixels has 5 values" in load_error(write_csv(tmp_path / "p.csv", pixels_bad))
    assert ", line 12: emotion is '9'" in load_error(write_csv(tmp_path / "e.csv", emotion_bad))


def test_bad_row_deep_in_a_later_chunk_gets_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_source, "_CHUNK_ROWS", 20)  # several chunks and blocks from a small file
    rows = [(e, pixel_text(im), u) for e, im, u in tiny_rows(7)]
    rows[130] = (1, "3 " * 2303 + "300", "PublicTest")
    message = load_error(write_csv(tmp_path / "deep.csv", rows))
    assert ", line 132: pixel 2304 is 300, outside 0..255" in message


def test_blank_line_is_named(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "blank.csv", tiny_rows(1))
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:4] + [""] + lines[4:]) + "\n")
    assert f"{path}, line 5: the line is blank" in load_error(path)


def test_extra_field_on_the_first_row_is_not_read_as_an_index(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "extra.csv", tiny_rows(1))
    lines = path.read_text().splitlines()
    lines[1] += ",surplus"
    path.write_text("\n".join(lines) + "\n")
    assert f"{path}, line 2: more fields than the header line has" in load_error(path)


def test_missing_column_lists_the_columns_found(tmp_path: Path) -> None:
    path = tmp_path / "cols.csv"
    path.write_text("emotion,pixels,split\n3,1 2,Training\n")
    message = load_error(path)
    assert f"{path}: missing column(s) Usage; found columns: emotion, pixels, split" in message
    assert "header emotion,pixels,Usage" in message


@pytest.mark.parametrize("content, expected", [
    (b"", "the file is empty"),
    (b"emotion,pixels,Usage\n", "has a header but no rows"),
    (b"\x1f\x8b\x08garbage", "cannot read the file"),
])
def test_unusable_csv_files(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "odd.csv"
    path.write_bytes(content)
    message = load_error(path)
    assert message.startswith(str(path)) and expected in message and "Fix:" in message


# --- the image-folder form -------------------------------------------------------------------

def test_image_folders_and_csv_give_identical_arrays(tmp_path: Path) -> None:
    rows = tiny_rows()
    from_csv = load_fer2013(write_csv(tmp_path / "t.csv", rows))
    from_folders = load_fer2013(write_folders(tmp_path / "kaggle", rows))
    assert load_raw(tmp_path / "kaggle").form == "folders"
    for split in ("train", "val", "test"):
        a, b = getattr(from_csv, split), getattr(from_folders, split)
        assert a.x.shape == b.x.shape and b.x.dtype == np.uint8 and b.y.dtype == np.int32
        for left, right in zip(sorted_split(a.x, a.y), sorted_split(b.x, b.y)):
            np.testing.assert_array_equal(left, right)


def test_real_slice_as_csv_and_as_image_folders(fer_slice: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(fer_slice)
    rows = [(int(e), np.array(p.split(), dtype=np.uint8).reshape(48, 48), USAGES.index(u))
            for e, p, u in zip(frame.emotion, frame.pixels, frame.Usage)]
    from_csv = load_raw(fer_slice)
    np.testing.assert_array_equal(from_csv.images, np.stack([r[1] for r in rows]))
    assert np.bincount(from_csv.usage).tolist() == [600, 150, 150]
    from_folders = load_raw(write_folders(tmp_path / "kaggle", rows))
    for usage in range(3):
        a, b = (from_csv.usage == usage), (from_folders.usage == usage)
        for left, right in zip(sorted_split(from_csv.images[a], from_csv.emotion[a]),
                               sorted_split(from_folders.images[b], from_folders.emotion[b])):
            np.testing.assert_array_equal(left, right)


def test_unprefixed_train_images_are_carved_into_a_stratified_validation_split(tmp_path: Path) -> None:
    rows = [(e, im, 0) for e, im, _ in tiny_rows(10)] + [r for r in tiny_rows(1) if r[2] == 2]
    root = write_folders(tmp_path / "plain", rows, prefixed=False)  # im<i>.png everywhere
    raw = load_raw(root, seed=0)
    assert raw.val_carved
    # 30 train/ images per emotion: 3 of each become validation; test/ stays test.
    assert raw.counts().tolist() == [[27] * 7, [3] * 7, [1] * 7]
    again, other = load_raw(root, seed=0), load_raw(root, seed=1)
    np.testing.assert_array_equal(raw.usage, again.usage)
    assert not np.array_equal(raw.usage, other.usage)


def test_publictest_files_make_carving_unnecessary(tmp_path: Path) -> None:
    rows = tiny_rows(2)
    root = write_folders(tmp_path / "k", rows)
    first = sorted((root / "train" / "happy").iterdir())[0]
    first.rename(first.with_name("extra.png"))
    raw = load_raw(root)
    assert not raw.val_carved
    assert raw.counts()[:, 3].tolist() == [2, 2, 2]  # the unprefixed file counts as Training


def test_image_folder_errors_name_the_file(tmp_path: Path) -> None:
    root = write_folders(tmp_path / "k", tiny_rows(1))
    happy = root / "train" / "happy"
    (happy / ".DS_Store").write_bytes(b"ignored: hidden")
    Image.new("L", (64, 48)).save(happy / "Training_big.png")
    message = load_error(root)
    assert f"{happy / 'Training_big.png'}: image is 64x48 pixels; expected 48x48" in message
    assert "Fix: resize it" in message

    (happy / "Training_big.png").write_bytes(b"not a png at all")
    message = load_error(root)
    assert f"{happy / 'Training_big.png'}: cannot read the image" in message and "Fix:" in message

    (happy / "Training_big.png").unlink()
    (happy / "notes.txt").write_text("x")
    assert f"{happy / 'notes.txt'}: not an image file" in load_error(root)

    (happy / "notes.txt").unlink()
    (root / "test" / "joy").mkdir()
    message = load_error(root)
    assert f"{root / 'test' / 'joy'}: unknown emotion folder 'joy'" in message
    assert "angry, disgust, fear, happy, sad, surprise, neutral" in message


def test_rgb_images_are_converted_to_grayscale(tmp_path: Path) -> None:
    rows = tiny_rows(1)
    root = write_folders(tmp_path / "k", rows)
    rgb = np.random.default_rng(3).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    target = root / "train" / EMOTIONS[0] / "Training_0.png"
    Image.fromarray(rgb, mode="RGB").save(target)
    raw = load_raw(root)
    expected = np.asarray(Image.fromarray(rgb, mode="RGB").convert("L"))
    matches = [np.array_equal(im, expected) for im in raw.images[raw.usage == 0]]
    assert sum(matches) == 1


def test_missing_test_folder_and_empty_split(tmp_path: Path) -> None:
    train_only = [r for r in tiny_rows(1) if r[2] == 0]
    root = write_folders(tmp_path / "k", train_only)
    assert f"{root}: no test/ folder" in load_error(root)
    (root / "test" / "happy").mkdir(parents=True)
    with pytest.raises(DataError, match=r"the val split \(PublicTest\) has no images\. Fix: put "
                                        r"PublicTest_\* images in test/"):
        load_fer2013(root)


# --- label maps --------------------------------------------------------------------------------

def test_builtin_label_maps() -> None:
    assert LABEL_MAPS["fer7"].class_names == EMOTIONS
    assert LABEL_MAPS["fer7"].lookup.tolist() == list(range(7))
    fer4 = LabelMap.from_spec("fer4")
    assert fer4.class_names == ("negative", "happy", "surprise", "neutral")
    assert fer4.lookup.tolist() == [0, 0, 0, 1, 0, 2, 3]
    assert LabelMap.from_spec(fer4) is fer4
    assert LabelMap.from_spec(fer4.to_spec()) == fer4


def test_custom_label_map_drops_unlisted_emotions(tmp_path: Path) -> None:
    spec = {"name": "mine", "groups": {"negative": ["angry", "fear"], "happy": ["happy"]}}
    label_map = LabelMap.from_spec(spec)
    assert label_map.lookup.tolist() == [0, -1, 0, 1, -1, -1, -1]
    assert label_map.dropped == ("disgust", "sad", "surprise", "neutral")
    data = load_fer2013(write_csv(tmp_path / "t.csv", tiny_rows()), labels=spec)
    assert data.class_names == ("negative", "happy") and data.num_classes == 2
    for split in (data.train, data.val, data.test):
        assert np.bincount(split.y).tolist() == [2 * PER_CELL, PER_CELL]
        assert split.x.shape == (3 * PER_CELL, 48, 48, 1)


def test_fer4_pools_negative_emotions(tiny_csv: Path) -> None:
    data = load_fer2013(tiny_csv, labels="fer4")
    assert np.bincount(data.val.y).tolist() == [4 * PER_CELL, PER_CELL, PER_CELL, PER_CELL]


@pytest.mark.parametrize("spec, expected", [
    ("fer5", "unknown label map 'fer5'; known label maps: fer7, fer4"),
    ({"name": "m", "groups": {"neg": ["angy"]}}, "label map 'm': groups.neg lists unknown emotion 'angy'"),
    ({"name": "m", "groups": {"a": ["fear"], "b": ["fear", "sad"]}},
     "emotion 'fear' is listed in groups.a and in groups.b"),
    ({"name": "m", "groups": {"a": ["fear"], "b": []}}, "label map 'm': groups.b is empty"),
    ({"name": "m", "groups": {}}, "field 'groups' must be a non-empty mapping"),
    ({"name": "m", "classes": {"a": ["fear"]}}, "unknown field(s) classes; valid fields: name, groups"),
    (3, "label map spec is a int"),
])
def test_bad_label_maps(spec, expected: str) -> None:
    with pytest.raises(DataError) as info:
        LabelMap.from_spec(spec)
    assert expected in str(info.value)


def test_split_empty_after_label_map_is_named(tmp_path: Path) -> None:
    rows = [r for r in tiny_rows(1) if not (r[0] == 1 and r[2] == 2)]  # no disgust in PrivateTest
    path = write_csv(tmp_path / "t.csv", rows)
    with pytest.raises(DataError, match=r"the test split \(PrivateTest\) is empty after label map "
                                        r"'only'"):
        load_fer2013(path, labels={"name": "only", "groups": {"disgust": ["disgust"]}})


# --- subset and class weights ---------------------------------------------------------------

def test_subset_is_stratified_deterministic_and_leaves_val_test(tmp_path: Path) -> None:
    train = [(e, im, 0) for e, im, u in tiny_rows(20) if u == 0 for _ in range(1 + (e == 3))]
    rows = train + tiny_rows(1)
    data = load_fer2013(write_csv(tmp_path / "t.csv", rows))
    assert np.bincount(data.train.y).tolist() == [21, 21, 21, 41, 21, 21, 21]
    part = data.subset(0.25, seed=3)
    assert np.bincount(part.train.y).tolist() == [5, 5, 5, 10, 5, 5, 5]
    assert part.val is data.val and part.test is data.test
    np.testing.assert_array_equal(part.train.x, data.subset(0.25, seed=3).train.x)
    assert not np.array_equal(part.train.x, data.subset(0.25, seed=4).train.x)
    assert data.subset(1.0) is data
    assert np.bincount(data.subset(0.001).train.y).tolist() == [1] * 7  # every class keeps one


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, float("nan"), "0.5", True])
def test_subset_rejects_bad_fractions(tiny_csv: Path, fraction) -> None:
    data = load_fer2013(tiny_csv)
    with pytest.raises(ValueError, match=r"subset: fraction must be a number in \(0, 1\]"):
        data.subset(fraction)


def test_class_weights_are_balanced(tmp_path: Path) -> None:
    train = [(e, im, 0) for e, im, u in tiny_rows(2) if u == 0 for _ in range(1 + 3 * (e == 3))]
    rows = train + [r for r in tiny_rows(1) if r[2] != 0]
    data = load_fer2013(write_csv(tmp_path / "t.csv", rows))
    counts = np.bincount(data.train.y)  # happy has 4x the images of every other class
    weights = data.class_weights()
    n = len(data.train)
    assert weights == pytest.approx({c: n / (7 * counts[c]) for c in range(7)})
    assert weights[3] == pytest.approx(weights[0] / 4)
    assert sum(weights[c] * counts[c] for c in range(7)) == pytest.approx(n)


# --- cache -------------------------------------------------------------------------------------

def _cache_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*")) if cache_dir.exists() else []


def test_cache_is_written_once_and_then_read(tiny_csv: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    first = load_raw(tiny_csv, cache_dir=cache_dir)
    [cached] = _cache_files(cache_dir)
    assert cached.name.startswith("fer2013-csv-") and cached.suffix == ".npz"
    # Tamper with the cached images: a second load that returns them did not parse the CSV.
    with np.load(cached) as archive:
        arrays = dict(archive)
    arrays["images"] = 255 - arrays["images"]
    cache.save(cached, arrays)
    second = load_raw(tiny_csv, cache_dir=cache_dir)
    np.testing.assert_array_equal(second.images, 255 - first.images)
    assert _cache_files(cache_dir) == [cached]  # no temporary files left behind


def test_cache_defaults_to_fer_search_cache_env(tiny_csv: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_SEARCH_CACHE", str(tmp_path / "env-cache"))
    load_raw(tiny_csv)
    assert len(_cache_files(tmp_path / "env-cache")) == 1


def test_cache_rebuilt_when_the_csv_changes(tmp_path: Path) -> None:
    rows = tiny_rows(1)
    path, cache_dir = write_csv(tmp_path / "t.csv", rows), tmp_path / "cache"
    before = load_raw(path, cache_dir=cache_dir)
    rows[0][1][0, 0] = 255 - rows[0][1][0, 0]
    write_csv(path, rows)
    after = load_raw(path, cache_dir=cache_dir)
    assert after.images[0, 0, 0] == 255 - before.images[0, 0, 0]
    assert len(_cache_files(cache_dir)) == 2


def test_folder_cache_keyed_by_names_sizes_and_mtimes(tmp_path: Path) -> None:
    rows = tiny_rows(1)
    root, cache_dir = write_folders(tmp_path / "k", rows), tmp_path / "cache"
    load_raw(root, cache_dir=cache_dir)
    target = root / "train" / EMOTIONS[0] / "Training_0.png"
    stat = target.stat()
    # Same name, size and mtime: the fingerprint matches, so the unreadable file is never opened.
    target.write_bytes(b"\0" * stat.st_size)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(load_raw(root, cache_dir=cache_dir)) == len(rows)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # now it differs: re-read
    assert "Training_0.png: cannot read the image" in load_error(root, cache_dir=cache_dir)


def test_corrupt_cache_is_rebuilt(tiny_csv: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    good = load_raw(tiny_csv, cache_dir=cache_dir)
    [cached] = _cache_files(cache_dir)
    cached.write_bytes(cached.read_bytes()[:1000])  # as if a copy had been cut short
    again = load_raw(tiny_csv, cache_dir=cache_dir)
    np.testing.assert_array_equal(again.images, good.images)
    assert cache.load(cached) is not None  # rewritten whole


def test_unwritable_cache_only_costs_a_reparse(tiny_csv: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    raw = load_raw(tiny_csv, cache_dir=blocker / "cache")
    assert len(raw) == 7 * 3 * PER_CELL
    assert "could not write the FER2013 cache" in caplog.text


# --- tf.data pipeline -----------------------------------------------------------------------

@pytest.fixture
def small_data(tmp_path: Path) -> FERData:
    return load_fer2013(write_csv(tmp_path / "t.csv", tiny_rows(4)))  # 28 images per split


def _epoch(ds) -> tuple[np.ndarray, np.ndarray]:
    batches = list(ds.as_numpy_iterator())
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def test_eval_dataset_keeps_order_and_never_augments(small_data: FERData) -> None:
    ds = make_dataset(small_data.val, batch_size=8, training=False, augment=Augment(rotation=0.2))
    shapes = [(x.shape, x.dtype, y.shape, y.dtype) for x, y in ds.as_numpy_iterator()]
    assert shapes[0] == ((8, 48, 48, 1), np.float32, (8,), np.int32)
    assert [s[0][0] for s in shapes] == [8, 8, 8, 4]
    x, y = _epoch(ds)
    np.testing.assert_array_equal(x, small_data.val.x.astype(np.float32))  # 0..255, not rescaled
    np.testing.assert_array_equal(y, small_data.val.y)


def test_training_dataset_shuffles_deterministically_each_epoch(small_data: FERData) -> None:
    x1, y1 = _epoch(make_dataset(small_data.train, batch_size=8, training=True, seed=5))
    x2, _ = _epoch(make_dataset(small_data.train, batch_size=8, training=True, seed=5, epoch=1))
    x_again, _ = _epoch(make_dataset(small_data.train, batch_size=8, training=True, seed=5, epoch=0))
    other_seed, _ = _epoch(make_dataset(small_data.train, batch_size=8, training=True, seed=6))
    np.testing.assert_array_equal(sorted_split(x1, y1)[0],  # every image once per epoch
                                  sorted_split(small_data.train.x, small_data.train.y)[0])
    assert not np.array_equal(x1, small_data.train.x)  # shuffled
    assert not np.array_equal(x1, x2)  # reshuffled next epoch
    assert not np.array_equal(x1, other_seed)
    np.testing.assert_array_equal(x1, x_again)  # a function of the seed and the epoch


def _stream(pipeline: TrainingPipeline, epochs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    batches = pipeline.dataset.take(epochs * pipeline.steps_per_epoch).as_numpy_iterator()
    return [(x, y) for x, y in batches]


def test_a_training_pipeline_streams_the_epochs_make_dataset_gives(small_data: FERData) -> None:
    aug = Augment(flip=True, rotation=0.05, zoom=0.1)
    pipeline = TrainingPipeline(small_data.train, seed=3).configure(batch_size=8, augment=aug, first_epoch=1)
    assert pipeline.steps_per_epoch == 4  # 28 images
    stream = _stream(pipeline, 2)
    expected = [b for e in (1, 2) for b in make_dataset(small_data.train, batch_size=8, training=True, augment=aug,
                                                       seed=3, epoch=e).as_numpy_iterator()]
    assert [x.shape[0] for x, _ in stream] == [8, 8, 8, 4, 8, 8, 8, 4]
    for (x, y), (x_ref, y_ref) in zip(stream, expected, strict=True):
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)
    # Reused with other settings, as the next trial does: the new batch size, no augmentation, epoch 0.
    pipeline.configure(batch_size=16, augment=Augment(flip=False))
    (x, y), (x2, y2) = _stream(pipeline, 1)
    plain, labels = _epoch(make_dataset(small_data.train, batch_size=16, training=True, seed=3))
    np.testing.assert_array_equal(np.concatenate([x, x2]), plain)
    np.testing.assert_array_equal(np.concatenate([y, y2]), labels)


def test_a_training_pipeline_gives_one_hot_labels_when_asked(small_data: FERData) -> None:
    pipeline = TrainingPipeline(small_data.train, seed=0, one_hot=7).configure(batch_size=8, augment=Augment())
    (_, y), *_ = _stream(pipeline, 1)
    assert y.shape == (8, 7) and np.all(y.sum(axis=1) == 1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        pipeline.configure(batch_size=0, augment=Augment())


def test_the_one_hot_form_of_a_pipeline_shares_its_images(small_data: FERData) -> None:
    """The label forms of one subset stream the same batches from one copy of the images (the copy is
    66 MB for all of Training, and a search uses both forms when it samples label smoothing)."""
    ids = TrainingPipeline(small_data.train, seed=3)
    hot = ids.with_labels(7)
    assert hot._tensors[0] is ids._tensors[0]
    aug = Augment(flip=True, rotation=0.05)
    (x, y), *_ = _stream(ids.configure(batch_size=8, augment=aug, first_epoch=1), 1)
    (x_hot, y_hot), *_ = _stream(hot.configure(batch_size=8, augment=aug, first_epoch=1), 1)
    np.testing.assert_array_equal(x_hot, x)
    np.testing.assert_array_equal(y_hot.argmax(axis=1), y)
    assert y_hot.shape == (8, 7)


def test_pipelines_run_without_autotuning(small_data: FERData) -> None:
    # An iterator's destructor waits for tf.data's autotuning thread to wake (up to a minute later):
    # model.fit dropping its last epoch's iterator made every trial wait for it (docs/performance.md).
    for training in (True, False):
        ds = make_dataset(small_data.train, batch_size=8, training=training, augment=Augment(rotation=0.05))
        assert ds.options().autotune.enabled is False
    assert TrainingPipeline(small_data.train).dataset.options().autotune.enabled is False


def test_augmentation_changes_training_images(small_data: FERData) -> None:
    plain, _ = _epoch(make_dataset(small_data.train, batch_size=8, training=True, seed=1))
    aug = Augment(flip=True, rotation=0.05, zoom=0.1, shift=0.1)
    first, _ = _epoch(make_dataset(small_data.train, batch_size=8, training=True, augment=aug, seed=1))
    second, _ = _epoch(make_dataset(small_data.train, batch_size=8, training=True, augment=aug, seed=1, epoch=1))
    assert first.shape == plain.shape and first.dtype == np.float32
    assert first.min() >= 0 and first.max() <= 255
    changed = [not np.array_equal(a, b) for a, b in zip(first, plain)]
    assert sum(changed) >= len(changed) - 1
    assert not np.array_equal(first, second)  # new draws every epoch (and a new order)


def test_flip_only_mirrors_whole_images(small_data: FERData) -> None:
    plain, _ = _epoch(make_dataset(small_data.train, batch_size=8, training=True, seed=2))
    flipped, _ = _epoch(make_dataset(small_data.train, batch_size=8, training=True, seed=2,
                                     augment=Augment(flip=True)))
    mirrored = [np.array_equal(f, p[:, ::-1]) for f, p in zip(flipped, plain)]
    same = [np.array_equal(f, p) for f, p in zip(flipped, plain)]
    assert all(m or s for m, s in zip(mirrored, same))
    assert 0 < sum(mirrored) < len(mirrored)


@pytest.mark.parametrize("kwargs, field", [
    ({"rotation": -0.1}, "rotation"), ({"zoom": 1.5}, "zoom"), ({"shift": "0.1"}, "shift"),
    ({"flip": "yes"}, "flip"),
])
def test_augment_rejects_bad_values(kwargs, field: str) -> None:
    with pytest.raises(ValueError, match=f"Augment.{field} must be"):
        Augment(**kwargs)
    assert Augment(flip=False).enabled is False and Augment(flip=False, zoom=0.1).enabled
