"""Resident memory: reading it, and handing what a finished trial freed back to the system.

TensorFlow allocates through the C library's malloc from many threads. glibc gives threads that
contend their own arenas (up to 8 per core), and keeps what is freed in them for reuse: after a
trial's model is dropped and collected, its memory is free but stays resident, scattered over
arenas, and each new model lands partly elsewhere. Over 20 small trials in one process that read
+257 MiB; trimming the arenas after each trial, +82 MiB; capping them at two as well, +8 MiB
(benchmarks/bench_memory.py, docs/performance.md). Elsewhere than glibc both are no-ops.

Where TensorFlow runs its oneDNN kernels (by default on CPUs with AVX512_VNNI, AVX512_BF16 or AMX),
tensors of 4 KiB or more come from a pool of its own instead, which keeps the most any trial held and
which the trim cannot reach (+256 MiB over those 20 trials on such a CPU). TensorFlow's
TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1 sends them to malloc too; it is left to the user, since 32 filters at
batch 128 trained 1.2x slower that way (docs/performance.md, section 4). What the pool holds idle is
memory the next trial's tensors reuse, not growth: `pool_idle_mb` reads it, and the search's memory
watch leaves it out.
"""
from __future__ import annotations

import functools
import gc
import platform
import sys

_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h
ARENAS = 2


@functools.cache
def _glibc():
    """The C library as a ctypes.CDLL where it is glibc, else None (imported here: `--help` stays light)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")  # glibc's soname everywhere
    except OSError:
        return None


def cap_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Let malloc make at most `arenas` arenas from now on; True if it took. Call it before TensorFlow
    is imported (its thread pools make the arenas): search.run does, first thing. Threads
    then share arenas: on two cores a training epoch measured the same within noise (0.98x by
    medians, 1.01x by the fastest epochs; bench_memory.py --parts 3)."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, arenas) == 1)


def return_freed_memory(*, collect: bool = True) -> None:
    """Collect garbage (a dropped Keras model is held in reference cycles), then give every arena's
    free pages back to the system (`malloc_trim`, 2-4 ms here)."""
    if collect:
        gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def resident_mb(pid: int | str = "self") -> float | None:
    """Resident memory (VmRSS) in MB of this process, or of process `pid`; None where /proc is missing
    or the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def pool_idle_mb() -> float:
    """MB that TensorFlow's CPU tensor pool holds without a tensor in it: the most it has held at once
    less what it holds now (its own statistics, which only the pool keeps). 0 where TensorFlow is not
    imported or has no pool (oneDNN off, or its tensors sent to malloc)."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return 0.0
    try:
        info = tf.config.experimental.get_memory_info("CPU:0")
    except ValueError:  # "Allocator stats not available": malloc serves the tensors
        return 0.0
    return max(info["peak"] - info["current"], 0) / 2**20
