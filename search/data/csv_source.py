"""Parse the FER2013 CSV (``emotion,pixels,Usage``, plain or gzipped) into arrays.

The pixel column is parsed by vectorised byte arithmetic over small blocks of rows. Any block in
which that fast path sees something unusual is re-parsed row by row, so the error names the exact
first bad row, and harmless oddities (tabs, leading zeros) are still accepted.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from search.data.schema import EMOTION_LEGEND, EMOTIONS, IMAGE_SIZE, PIXELS, USAGES, DataError

COLUMNS = ("emotion", "pixels", "Usage")
_CHUNK_ROWS = 2048  # rows pandas hands over at a time
_BLOCK_ROWS = 64  # ~0.5 MB of text per block: the temporaries stay in CPU cache
_SENTINEL = 1000  # marks each row end in the value stream; no 1-3 digit token reaches it
_INT = re.compile(r"[+-]?[0-9]+")


class _RowProblem(Exception):
    def __init__(self, row: int, problem: str, fix: str = "correct the row or remove it") -> None:
        super().__init__(problem)
        self.row, self.problem, self.fix = row, problem, fix


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(images uint8 (N,48,48), emotion int8 (N,), usage int8 (N,))`` from a FER2013 CSV."""
    images, emotions, usages = [], [], []
    offset = 0
    for chunk in _read_chunks(path):
        try:
            # Earlier chunks were clean, so the first problem here is the first in the file.
            im, em, us = _parse_chunk(chunk, offset)
        except _RowProblem as bad:
            # Header is line 1 and blank lines are kept as rows, so data row r is on line r + 2.
            raise DataError(f"{path}, line {bad.row + 2}: {bad.problem}. Fix: {bad.fix}") from None
        images.append(im)
        emotions.append(em)
        usages.append(us)
        offset += len(chunk)
    if offset == 0:
        raise DataError(f"{path}: the CSV has a header but no rows; expected FER2013 rows "
                        f"emotion,pixels,Usage. Fix: point --data at the full fer2013.csv")
    return (np.concatenate(images).reshape(offset, IMAGE_SIZE, IMAGE_SIZE),
            np.concatenate(emotions), np.concatenate(usages))


def _parse_chunk(chunk: pd.DataFrame, first_row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    emotion_text = chunk["emotion"].to_numpy(dtype=object)
    pixel_text = chunk["pixels"].to_numpy(dtype=object)
    usage_text = chunk["Usage"].to_numpy(dtype=object)
    emotion, emotion_bad = _codes(emotion_text, {str(i): i for i in range(len(EMOTIONS))})
    usage, usage_bad = _codes(usage_text, {u: i for i, u in enumerate(USAGES)})
    first_other = min(emotion_bad, usage_bad)
    # Pixel problems only matter above the first emotion/Usage problem: report the earliest.
    images = _parse_pixels(pixel_text[:first_other], first_row)
    if first_other < len(chunk):
        row, at = first_other, first_row + first_other
        if emotion_text[row] == pixel_text[row] == usage_text[row] == "":
            raise _RowProblem(at, "the line is blank; expected emotion,pixels,Usage",
                              "remove the blank line")
        if emotion_bad == row:
            raise _RowProblem(at, f"emotion is {_show(emotion_text[row])}; expected an integer "
                                  f"0..6 ({EMOTION_LEGEND})", "correct the emotion or remove the row")
        raise _RowProblem(at, f"Usage is {_show(usage_text[row])}; expected one of "
                              f"{', '.join(USAGES)}", "correct the Usage or remove the row")
    return images, emotion.astype(np.int8), usage.astype(np.int8)


def _read_chunks(path: Path) -> Iterator[pd.DataFrame]:
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    options = dict(dtype=str, keep_default_na=False, skip_blank_lines=False, engine="c",
                   compression="gzip" if gzipped else "infer")
    try:
        columns = _check_columns(path, pd.read_csv(path, nrows=0, **options).columns)
        # Chunks keep the working set small; that alone makes the parse ~30% faster.
        with pd.read_csv(path, chunksize=_CHUNK_ROWS, **options) as reader:
            for chunk in reader:
                if not isinstance(chunk.index, pd.RangeIndex):
                    # pandas reads an extra field on line 2 as an index column and shifts the rest
                    raise DataError(f"{path}, line 2: more fields than the header line has; "
                                    f"expected emotion,pixels,Usage. Fix: remove the extra fields")
                yield chunk.set_axis(columns, axis=1)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected a CSV with the header line "
                        f"emotion,pixels,Usage. Fix: point --data at fer2013.csv(.gz)") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not a readable FER2013 CSV ({str(exc).strip()}); expected columns "
                        f"emotion,pixels,Usage on every line. Fix: repair the line named") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text CSV ({exc}); expected fer2013.csv or "
                        f"fer2013.csv.gz. Fix: point --data at the CSV or image folders") from None
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read the file ({exc}); it may be a truncated download. "
                        f"Fix: download the file again") from None


def _check_columns(path: Path, found: pd.Index) -> list[str]:
    """Canonical names for the columns (stripped, case-insensitive); error if one is missing."""
    stripped = [str(c).strip() for c in found]
    canonical = {c.lower(): c for c in COLUMNS}
    missing = [c for c in COLUMNS if c.lower() not in {s.lower() for s in stripped}]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found columns: "
                        f"{', '.join(stripped)}. Fix: line 1 must be the header "
                        f"emotion,pixels,Usage")
    return [canonical.get(s.lower(), s) for s in stripped]


def _codes(text: np.ndarray, valid: dict[str, int]) -> tuple[np.ndarray, int]:
    """Map strings to ids; return the ids and the first row that maps to nothing (or len)."""
    codes = pd.Series(text, dtype=object).str.strip().map(valid)
    bad = np.flatnonzero(codes.isna().to_numpy())
    return codes.fillna(-1).to_numpy(dtype=np.int64), int(bad[0]) if bad.size else len(text)


def _parse_pixels(rows: np.ndarray, first_row: int) -> np.ndarray:
    out = np.empty((len(rows), PIXELS), dtype=np.uint8)
    for start in range(0, len(rows), _BLOCK_ROWS):
        block = rows[start:start + _BLOCK_ROWS]
        values = _parse_block_fast(block)
        if values is None:
            values = np.stack([_parse_row(text, first_row + start + i)
                               for i, text in enumerate(block)])
        out[start:start + len(block)] = values
    return out


def _parse_block_fast(block: np.ndarray) -> np.ndarray | None:
    """Parse rows of plain ``d d d`` text; None when anything needs the careful row parser."""
    m = len(block)
    b = np.frombuffer(("\n".join(block) + "\n").encode("ascii", "replace"), dtype=np.uint8)
    digit_value = b - np.uint8(48)
    is_digit = digit_value < 10
    newline = b == 10
    if not (is_digit | newline | (b == 32)).all():
        return None
    if (is_digit[3:] & is_digit[2:-1] & is_digit[1:-2] & is_digit[:-3]).any():
        return None  # a 4+ digit token
    # Value of the 1-3 digit number ending at each position (only read where a token ends).
    d = np.zeros(len(b) + 2, dtype=np.uint16)
    np.multiply(digit_value, is_digit, out=d[2:], casting="unsafe")
    value = d[2:] + d[1:-1] * np.uint16(10)
    hundreds = d[:-2] * np.uint16(100)
    hundreds[1:] *= is_digit[:-1]  # a hundreds digit counts only if the tens place is a digit
    value += hundreds
    value += newline * np.uint16(_SENTINEL)  # >= _SENTINEL at every newline, < 1000 elsewhere
    token_end = np.zeros_like(is_digit)
    np.greater(is_digit[:-1], is_digit[1:], out=token_end[:-1])
    stream = value[token_end | newline]
    # m sentinels exist in total; if they sit at the end of every 2305-slot, each row has 2304.
    if stream.size != m * (PIXELS + 1):
        return None
    table = stream.reshape(m, PIXELS + 1)
    if not (table[:, -1] >= _SENTINEL).all() or table[:, :-1].max(initial=0) > 255:
        return None
    return table[:, :-1].astype(np.uint8)


def _parse_row(text: str, row: int) -> np.ndarray:
    tokens = text.split()
    values = np.empty(len(tokens), dtype=np.int64)
    for i, token in enumerate(tokens):
        if not (token.isascii() and _INT.fullmatch(token)):
            raise _RowProblem(row, f"pixel {i + 1} is {_show(token)}, not an integer; expected "
                                   f"{PIXELS} space-separated integers 0..255")
        value = int(token)
        if not 0 <= value <= 255:
            raise _RowProblem(row, f"pixel {i + 1} is {_show(token, quote=False)}, outside 0..255; expected "
                                   f"{PIXELS} space-separated integers 0..255")
        values[i] = value
    if len(tokens) != PIXELS:
        raise _RowProblem(row, f"pixels has {len(tokens)} values; expected {PIXELS} "
                               f"({IMAGE_SIZE}x{IMAGE_SIZE} grayscale, space-separated)")
    return values.astype(np.uint8)


def _show(text: str, quote: bool = True, limit: int = 40) -> str:
    """A value for a message; a long one (say, a whole pixel string) is cut short."""
    short = text if len(text) <= limit else text[:limit] + "..."
    return repr(short) if quote else short
