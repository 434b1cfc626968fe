"""Find the data, load it (through the cache), and split it into train / val / test."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from search.data import cache, csv_source, folders
from search.data.labels import LabelMap
from search.data.schema import SPLIT_NAMES, USAGES, DataError, RawFER

_HOW_TO_GIVE = ("pass --data PATH or set FER2013_PATH to fer2013.csv(.gz) or to the image-folder "
                "root holding train/ and test/")
_CSV_NAMES = ("fer2013.csv", "fer2013.csv.gz")


def resolve_data_path(path: str | os.PathLike | None) -> Path:
    """The FER2013 source: ``path``, else env ``FER2013_PATH``.

    A folder without ``train/`` that holds ``fer2013.csv(.gz)`` resolves to that file.
    """
    origin = "given"
    if path is None or str(path) == "":
        path, origin = os.environ.get("FER2013_PATH", ""), "from FER2013_PATH"
        if not path:
            raise DataError(f"no FER2013 data given. Fix: {_HOW_TO_GIVE}")
    resolved = Path(path).expanduser().absolute()
    if not resolved.exists():
        raise DataError(f"FER2013 data path {resolved} ({origin}) does not exist. Fix: {_HOW_TO_GIVE}")
    if resolved.is_dir() and not (resolved / "train").is_dir():
        csvs = [resolved / name for name in _CSV_NAMES if (resolved / name).is_file()]
        if not csvs:
            raise DataError(f"{resolved} ({origin}) holds neither train/ and test/ image folders "
                            f"nor {' or '.join(_CSV_NAMES)}. Fix: {_HOW_TO_GIVE}")
        resolved = csvs[0]
    return resolved


def load_raw(path: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
             seed: int = 0) -> RawFER:
    """Every row of the source with its original emotion and usage ids (cached after one parse).

    Args:
        path: CSV file or image-folder root; None reads env ``FER2013_PATH``.
        cache_dir: cache folder; None reads env ``FER_SEARCH_CACHE``, else ``~/.cache/fer-search``.
        seed: seeds the validation split carved from unprefixed ``train/`` images (folders only).
    """
    source = resolve_data_path(path)
    cache_dir = cache.resolve_cache_dir(cache_dir)
    if source.is_dir():
        form, listing = "folders", folders.list_images(source)
        key = folders.fingerprint(source, listing)
        parse = lambda: folders.read_images(listing)  # noqa: E731
    else:
        form, key = "csv", cache.file_sha256(source)
        parse = lambda: csv_source.read_csv(source)  # noqa: E731
    cache_file = cache.cache_path(cache_dir, form, key)
    arrays = cache.load(cache_file)
    if arrays is None:
        images, emotion, usage = parse()
        arrays = {"images": images, "emotion": emotion, "usage": usage}
        cache.save(cache_file, arrays)
    usage, carved = folders.carve_validation(arrays["emotion"], arrays["usage"], seed)
    return RawFER(images=arrays["images"], emotion=arrays["emotion"], usage=usage,
                  source=str(source), form=form, val_carved=carved)


@dataclass(frozen=True, eq=False)
class Split:
    """One split: ``x`` uint8 ``(n, 48, 48, 1)``, ``y`` int32 ``(n,)`` class ids."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True, eq=False)
class FERData:
    """Train (Training), val (PublicTest) and test (PrivateTest) under one label map."""

    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, fraction: float, seed: int = 0) -> FERData:
        """A stratified, seeded ``fraction`` of train; val and test are left whole.

        Every class present keeps at least one image. ``fraction=1.0`` returns ``self``.
        """
        if (isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.number))
                or not 0 < fraction <= 1):
            raise ValueError(f"subset: fraction must be a number in (0, 1], got {fraction!r}")
        if fraction == 1:
            return self
        rng = np.random.default_rng(seed)
        keep = []
        for class_id in range(self.num_classes):
            rows = np.flatnonzero(self.train.y == class_id)
            if rows.size:
                take = max(1, math.floor(fraction * rows.size + 0.5))
                keep.append(rng.choice(rows, take, replace=False))
        keep = np.sort(np.concatenate(keep))
        return replace(self, train=Split(self.train.x[keep], self.train.y[keep]))

    def class_weights(self) -> dict[int, float]:
        """Balanced weights ``n / (k * count)`` over train, k = classes present in train.

        A class absent from train gets 0.0; it never occurs, so the weight is never applied.
        """
        counts = np.bincount(self.train.y, minlength=self.num_classes)
        n, k = int(counts.sum()), int((counts > 0).sum())
        return {c: (n / (k * int(counts[c])) if counts[c] else 0.0) for c in range(self.num_classes)}


def load_fer2013(path: str | os.PathLike | None = None, *,
                 labels: str | Mapping[str, Any] | LabelMap = "fer7",
                 cache_dir: str | os.PathLike | None = None, seed: int = 0) -> FERData:
    """Load FER2013 as train / val / test under a label map.

    Args:
        path: CSV file or image-folder root; None reads env ``FER2013_PATH``.
        labels: ``"fer7"``, ``"fer4"``, a ``{"name", "groups"}`` mapping or a LabelMap.
            Emotions the map drops are removed from every split.
        cache_dir: cache folder; None reads env ``FER_SEARCH_CACHE``, else ``~/.cache/fer-search``.
        seed: seeds the validation split carved from unprefixed ``train/`` images (folders only).

    Raises:
        DataError: bad source, or a split that is empty after the label map.
    """
    label_map = LabelMap.from_spec(labels)
    raw = load_raw(path, cache_dir=cache_dir, seed=seed)
    classes = label_map.lookup[raw.emotion]
    splits = {}
    for usage_id, name in enumerate(SPLIT_NAMES):
        rows = np.flatnonzero((raw.usage == usage_id) & (classes >= 0))
        if rows.size == 0:
            raise DataError(_empty_split_message(raw, usage_id, label_map))
        splits[name] = Split(raw.images[rows][..., np.newaxis], classes[rows].astype(np.int32))
    return FERData(**splits, class_names=label_map.class_names, source=raw.source)


def _empty_split_message(raw: RawFER, usage_id: int, label_map: LabelMap) -> str:
    name, usage = SPLIT_NAMES[usage_id], USAGES[usage_id]
    if (raw.usage == usage_id).any():
        return (f"{raw.source}: the {name} split ({usage}) is empty after label map "
                f"{label_map.name!r}, which drops {', '.join(label_map.dropped)}. Fix: keep at "
                f"least one emotion that {usage} rows have")
    if raw.form == "csv":
        fix = f"the CSV needs rows with Usage {usage}"
    elif usage_id == 0:
        fix = "put Training_* (or unprefixed) images in train/<emotion>/"
    elif usage_id == 1:
        fix = ("put PublicTest_* images in test/<emotion>/, or leave train/ images without a "
               "split prefix so 10% of them are carved off as validation")
    else:
        fix = "put PrivateTest_* (or unprefixed) images in test/<emotion>/"
    return f"{raw.source}: the {name} split ({usage}) has no images. Fix: {fix}"
