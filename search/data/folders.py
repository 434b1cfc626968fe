"""Read the Kaggle image-folder form: ``train/<emotion>/*.jpg`` and ``test/<emotion>/*.jpg``.

File-name prefixes carry the split (``Training_``, ``PublicTest_``, ``PrivateTest_``). Images in
``train/`` without a prefix are marked ``UNASSIGNED``; ``carve_validation`` decides their split.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from search.data.schema import EMOTIONS, IMAGE_SIZE, DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_FOLDERS = ("train", "test")
PREFIX_USAGE = {"Training_": 0, "PublicTest_": 1, "PrivateTest_": 2}
UNASSIGNED = -1
VAL_FRACTION = 0.1
_LAYOUT = ("expected train/<emotion>/*.jpg and test/<emotion>/*.jpg with emotion folders "
           + ", ".join(EMOTIONS))


def list_images(root: Path) -> list[tuple[os.DirEntry, int, int]]:
    """All images under ``root`` as ``(entry, emotion id, usage id or UNASSIGNED)``, sorted.

    Hidden files (``.DS_Store`` and the like) are skipped; anything else unexpected is an error.
    """
    found = []
    for split in SPLIT_FOLDERS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"{root}: no {split}/ folder; {_LAYOUT}. Fix: point --data at the "
                            f"folder that holds train/ and test/")
        for folder in _visible_entries(split_dir):
            emotion = folder.name.lower()
            if not folder.is_dir():
                raise DataError(f"{folder.path}: unexpected file in {split}/; {_LAYOUT}. "
                                f"Fix: move it into its emotion folder or remove it")
            if emotion not in EMOTIONS:
                raise DataError(f"{folder.path}: unknown emotion folder {folder.name!r}; valid "
                                f"folder names: {', '.join(EMOTIONS)}. Fix: rename or remove it")
            for entry in _visible_entries(folder.path):
                if entry.is_dir() or not entry.name.lower().endswith(IMAGE_SUFFIXES):
                    raise DataError(f"{entry.path}: not an image file; expected only "
                                    f"{'/'.join(IMAGE_SUFFIXES)} files in emotion folders. "
                                    f"Fix: remove it")
                usage = next((u for p, u in PREFIX_USAGE.items() if entry.name.startswith(p)),
                             UNASSIGNED if split == "train" else 2)
                found.append((entry, EMOTIONS.index(emotion), usage))
    return found


def _visible_entries(directory: str | Path) -> list[os.DirEntry]:
    with os.scandir(directory) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def fingerprint(root: Path, images: list[tuple[os.DirEntry, int, int]]) -> str:
    """sha256 over relative path, size and mtime of every image: changes when any file does."""
    digest = hashlib.sha256()
    for entry, _, _ in images:
        stat = entry.stat()
        rel = os.path.relpath(entry.path, root)
        digest.update(f"{rel}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_images(images: list[tuple[os.DirEntry, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode every image: ``(images uint8 (N,48,48), emotion int8 (N,), usage int8 (N,))``."""
    paths = [entry.path for entry, _, _ in images]
    # PIL releases the GIL while decoding, so threads overlap the decode work.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        pixels = list(pool.map(_read_image, paths, chunksize=256))
    out = np.stack(pixels) if pixels else np.empty((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    emotion = np.array([e for _, e, _ in images], dtype=np.int8)
    usage = np.array([u for _, _, u in images], dtype=np.int8)
    return out, emotion, usage


def _read_image(path: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                width, height = image.size
                raise DataError(f"{path}: image is {width}x{height} pixels; expected "
                                f"{IMAGE_SIZE}x{IMAGE_SIZE} grayscale. Fix: resize it to "
                                f"{IMAGE_SIZE}x{IMAGE_SIZE} or remove it")
            gray = image if image.mode == "L" else image.convert("L")
            return np.asarray(gray, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read the image ({exc}); expected a {IMAGE_SIZE}x"
                        f"{IMAGE_SIZE} JPEG or PNG. Fix: replace the file or remove it") from None


def carve_validation(emotion: np.ndarray, usage: np.ndarray, seed: int) -> tuple[np.ndarray, bool]:
    """Give UNASSIGNED rows a split; return the new usage array and whether PublicTest was carved.

    Without any PublicTest image, a stratified 10% of the unassigned train/ images becomes the
    validation split (seeded); otherwise unassigned images are Training.
    """
    usage = usage.copy()
    unassigned = usage == UNASSIGNED
    if not unassigned.any():
        return usage, False
    if (usage == 1).any():
        usage[unassigned] = 0
        return usage, False
    rng = np.random.default_rng(seed)
    usage[unassigned] = 0
    for emotion_id in range(len(EMOTIONS)):
        rows = np.flatnonzero(unassigned & (emotion == emotion_id))
        n_val = int(np.floor(VAL_FRACTION * rows.size + 0.5))
        usage[rng.choice(rows, n_val, replace=False)] = 1
    return usage, True
