"""Resident memory: reading it, and handing what a finished trial freed back to the system.

TensorFlow allocates through the C library's malloc from many threads. glibc gives threads that
contend their own arenas (up to 8 per core), and keeps what is freed in them for reuse: after a
trial's model is dropped and collected, its memory is free but stays resident, scattered over
arenas, and each new model lands partly elsewhere. Over 20 small trials in one process that read
+257 MiB; trimming the arenas after each trial, +82 MiB; capping them at two as well, +8 MiB
(benchmarks/bench_memory.py, docs/performance.md); a search now runs with one (`set_up_allocation`).
Elsewhere than glibc all of this is a no-op.

Where TensorFlow runs its oneDNN kernels (by default on CPUs with AVX512_VNNI, AVX512_BF16 or AMX),
tensors of 4 KiB or more come by default from a pool of its own, which keeps the most any trial held
and which the trim cannot reach (+256 to +301 MiB over those 20 trials on such CPUs).
`set_up_allocation` sends them to malloc instead (TensorFlow's TF_ONEDNN_USE_SYSTEM_ALLOCATOR), where
the trim reaches them, and has malloc keep even its largest blocks on its heap, in one arena, until
the trim: glibc maps every block over 32 MiB afresh and unmaps it when freed, so a wide model at batch
128, whose activations are such blocks, paid page faults at every step and trained 1.2x slower
through malloc than from the pool. Set up so, over 20 trials in one process memory grew +81 MiB where
the pool kept +301, training as fast (1.01x at the default point, 1.00x at 32 filters and batch
128), at a higher peak (2063 against 1503 MiB; section 4 of docs/performance.md). What a pool holds
idle is memory the next trial's tensors reuse, not growth: `pool_idle_mb` reads it, and the search's
memory watch leaves it out, for a user who keeps the pool (TF_ONEDNN_USE_SYSTEM_ALLOCATOR=0).
"""
from __future__ import annotations

import functools
import gc
import os
import platform
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # mallopt's parameter numbers in glibc's malloc.h
ARENAS = 2  # the cap measured first (+8 MiB over 20 trials without oneDNN); bench_memory's other set-ups
SEARCH_ARENAS = 1  # a search's: see set_up_allocation
ONEDNN_SYSTEM_ALLOCATOR = "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"  # TensorFlow reads it once, making its CPU allocator


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
    is imported (its thread pools make the arenas): search.run does, first thing, through
    `set_up_allocation` (SEARCH_ARENAS). Threads then share arenas: on two cores a training epoch
    measured the same within noise (0.98x by medians, 1.01x by the fastest epochs; bench_memory.py
    --parts 3)."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, arenas) == 1)


def keep_blocks_on_heap() -> bool:
    """Have malloc serve every block from its heap, never from a mapping of its own, and keep what is
    freed there until `return_freed_memory` trims it (after every trial); True if it took. The next
    step's tensors then reuse those pages without faulting them in again. glibc would otherwise give
    the top of its heap back whenever 128 KiB of it were free (setting mmap's limit stops that
    threshold from rising), and a validation pass at batch 256 faulted in 155,000-175,000 pages
    (docs/performance.md, section 4)."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_MAX, 0) == 1
                and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1)


def set_up_allocation() -> str:
    """Set up this process's memory as a search runs it, before TensorFlow is imported (search.run does,
    first thing): oneDNN's tensors sent to malloc unless TF_ONEDNN_USE_SYSTEM_ALLOCATOR is set already,
    malloc's blocks kept on its heap, and one arena: glibc unmaps a second arena's heap whenever it
    empties, whatever the trim threshold, and its pages fault in again (a probe: 115,000 faults in one
    validation pass, against hundreds with one arena). Says what took. Where malloc is not glibc's
    there is nothing to trim with, and nothing is changed."""
    if _glibc() is None:
        return "not glibc: allocation left as it is"
    capped, on_heap = cap_malloc_arenas(SEARCH_ARENAS), keep_blocks_on_heap()
    os.environ.setdefault(ONEDNN_SYSTEM_ALLOCATOR, "1")
    return (f"malloc's arenas capped at {SEARCH_ARENAS}: {capped}; blocks kept on its heap until trimmed: {on_heap}; "
            f"{ONEDNN_SYSTEM_ALLOCATOR}={os.environ[ONEDNN_SYSTEM_ALLOCATOR]}")


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
