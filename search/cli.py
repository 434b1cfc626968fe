"""Pieces the command-line tools share: common flags, `--set` parsing, error reporting."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml


class UsageError(ValueError):
    """A bad flag value; the CLIs print it and exit with status 2."""


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="PATH", help="FER2013 as fer2013.csv(.gz) or the Kaggle image "
                        "folders (train/, test/); default: $FER2013_PATH")
    parser.add_argument("--labels", metavar="NAME", help="label map: fer7 (the 7 emotions) or fer4 "
                        "(negative, happy, surprise, neutral); default: the space's")
    parser.add_argument("--results", metavar="DIR", type=Path, default=Path("results"),
                        help="where outputs go (default: results/)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                        help="fix a parameter of the space, e.g. --set dropout=0.3 (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling and training (default: 0)")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings to a dict, values read as YAML scalars (0.3, true, adam, null)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: write it as KEY=VALUE, e.g. --set dropout=0.3")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return out


def check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the results folder {directory}: {exc.strerror}; pass --results DIR") from None
    if not os.access(directory, os.W_OK):
        raise UsageError(f"the results folder {directory} is not writable; pass --results DIR")


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def quiet_tensorflow() -> None:
    """Keep TensorFlow's start-up chatter out of progress output (set before it is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
