"""Parsed FER2013 arrays cached on disk, keyed by the source's content.

One uncompressed ``.npz`` per source version. Written to a temporary file and renamed into place,
so a killed process never leaves a half-written cache; an unreadable cache file is rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
import zipfile
from pathlib import Path

import numpy as np

from search.data.schema import EMOTIONS, IMAGE_SIZE

CACHE_VERSION = 1  # bump when the parse or the cached layout changes
_ARRAYS = ("images", "emotion", "usage")
log = logging.getLogger(__name__)


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir``, else env ``FER_SEARCH_CACHE``, else ``~/.cache/fer-search``."""
    chosen = cache_dir or os.environ.get("FER_SEARCH_CACHE") or Path.home() / ".cache" / "fer-search"
    return Path(chosen).expanduser()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cache_path(cache_dir: Path, form: str, digest: str) -> Path:
    return cache_dir / f"fer2013-{form}-{digest[:32]}-v{CACHE_VERSION}.npz"


def load(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is missing or unusable (it will be rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in _ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("FER2013 cache %s is unreadable (%s); rebuilding it", path, exc)
        return None
    images, emotion, usage = (arrays[name] for name in _ARRAYS)
    n = len(emotion)
    if (images.dtype != np.uint8 or images.shape != (n, IMAGE_SIZE, IMAGE_SIZE)
            or emotion.shape != (n,) or usage.shape != (n,) or n == 0
            or emotion.min() < 0 or emotion.max() >= len(EMOTIONS) or usage.min() < -1
            or usage.max() > 2):
        log.warning("FER2013 cache %s has unexpected contents; rebuilding it", path)
        return None
    return arrays


def save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically; a cache that cannot be written only costs a re-parse next time."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **{name: arrays[name] for name in _ARRAYS})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write the FER2013 cache %s (%s); the data will be parsed again "
                    "next time. Set FER_SEARCH_CACHE to a writable folder to fix this", path, exc)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the folder itself is unusable: nothing was written
