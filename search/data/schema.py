"""Names shared by every part of the data layer: emotions, splits, the error type, raw arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
USAGES: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")  # index = usage id
IMAGE_SIZE = 48
PIXELS = IMAGE_SIZE * IMAGE_SIZE

EMOTION_LEGEND = ", ".join(f"{i} {name}" for i, name in enumerate(EMOTIONS))


class DataError(ValueError):
    """Bad data input; the message names the file, the row or image, what was expected and the fix."""


@dataclass(frozen=True, eq=False)
class RawFER:
    """Every row of a FER2013 source, before any label map or split selection.

    Attributes:
        images: uint8 ``(N, 48, 48)`` grayscale faces.
        emotion: int8 ``(N,)`` original emotion ids, indices into ``EMOTIONS``.
        usage: int8 ``(N,)`` split ids: 0 Training, 1 PublicTest, 2 PrivateTest.
        source: the CSV file or image-folder root the rows came from.
        form: ``"csv"`` or ``"folders"``.
        val_carved: True when PublicTest was carved from unprefixed ``train/`` images.
    """

    images: np.ndarray
    emotion: np.ndarray
    usage: np.ndarray
    source: str
    form: str
    val_carved: bool = False

    def __len__(self) -> int:
        return int(self.emotion.shape[0])

    def counts(self) -> np.ndarray:
        """Rows per (usage, emotion) as an int64 array of shape ``(3, 7)``."""
        table = np.zeros((len(USAGES), len(EMOTIONS)), dtype=np.int64)
        np.add.at(table, (self.usage.astype(np.intp), self.emotion.astype(np.intp)), 1)
        return table
