"""What every benchmark prints and measures the same way: the machine, its load, resident memory.

Benchmarks run as scripts (`python benchmarks/bench_x.py`), so this module is imported by its
plain name; it puts the repository root on the path so `search` imports without installing.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def add_data_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=os.environ.get("FER2013_PATH"),
                        help="FER2013 CSV or image-folder root (default: $FER2013_PATH)")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")) -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in present]
    except OSError:
        pass
    return []


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def rss_mb() -> float:
    """Resident memory of this process in MiB, from /proc/self/status (VmRSS)."""
    from search.memory import resident_mb

    rss = resident_mb()
    if rss is None:
        raise RuntimeError("no VmRSS in /proc/self/status: resident memory is measured on Linux only")
    return rss


def versions(*modules: str) -> str:
    out = [f"python {sys.version.split()[0]}"]
    for name in modules:
        try:
            module = __import__(name)
            out.append(f"{name} {module.__version__}")
        except ImportError:
            out.append(f"{name} (not installed)")
    return "  ".join(out)


class Machine:
    """Prints the machine and the load average when a benchmark starts, and the load when it ends.

        with Machine("bench_trial", modules=("tensorflow", "keras")):
            ...
    """

    def __init__(self, name: str, modules: tuple[str, ...] = ("numpy", "tensorflow", "keras", "optuna")):
        self.name, self.modules = name, modules

    def __enter__(self) -> Machine:
        self.started = time.perf_counter()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"benchmark  {self.name}  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
        print(f"command    {' '.join([Path(sys.executable).name, *sys.argv])}")
        print(f"platform   {platform.platform()}")
        print(f"cpu        {cpu_model()}  x{cores} usable cores ({os.cpu_count()} online)  "
              f"flags: {' '.join(cpu_flags()) or '-'}")
        print(f"versions   {versions(*self.modules)}")
        print(f"load avg   {load_average()}  (1, 5, 15 min) at start", flush=True)
        return self

    def __exit__(self, *exc) -> None:
        print(f"load avg   {load_average()}  (1, 5, 15 min) at end; "
              f"{(time.perf_counter() - self.started) / 60:.1f} min in all", flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def epoch_timer(per_batch: bool = False):
    """A Keras callback recording each epoch's seconds (from its start to the end of every callback
    before this one, validation included). With `per_batch`, also each epoch's training seconds (to
    its last training step, validation left out) and when the first step ended (`first_step_end`,
    perf_counter time); off by default, since a per-batch hook is itself a cost the plain fit has not."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.train_seconds: list[float] = []
            self.first_step_end: float | None = None
            self._begin = self._last_step = 0.0
            self.first_begin: float | None = None
            # perf_counter times, for a breakdown of the wall time around the epochs
            self.train_begin = self.train_end = 0.0
            self.epoch_spans: list[tuple[float, float]] = []  # (begin, end) of every epoch

        @property
        def epoch_seconds(self) -> list[float]:
            return [end - begin for begin, end in self.epoch_spans]

        def on_train_begin(self, logs=None):
            self.train_begin = time.perf_counter()

        def on_train_end(self, logs=None):
            self.train_end = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self._begin = time.perf_counter()
            if self.first_begin is None:
                self.first_begin = self._begin

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_spans.append((self._begin, time.perf_counter()))
            if per_batch:
                self.train_seconds.append(self._last_step - self._begin)

    class BatchTimer(EpochTimer):
        def on_train_batch_end(self, batch, logs=None):
            self._last_step = time.perf_counter()
            if self.first_step_end is None:
                self.first_step_end = self._last_step

    return BatchTimer() if per_batch else EpochTimer()
