"""search.memory: what a finished trial freed goes back to the system, and the search reads memory after that."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="malloc_trim and mallopt are glibc's")


@glibc
def test_freed_memory_goes_back_to_the_system():
    """128 MiB freed under a live allocation stays resident (free() only returns the top of the heap);
    return_freed_memory gives it back. Run in a fresh interpreter, whose heap holds nothing else."""
    script = textwrap.dedent("""
        import ctypes
        from search.memory import resident_mb, return_freed_memory
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: 64 KiB blocks come from the heap, as TensorFlow's small ones do
        blocks = [libc.malloc(64 * 1024) for _ in range(2048)]
        for b in blocks:
            ctypes.memset(b, 1, 64 * 1024)  # touch the pages: resident
        pin = libc.malloc(64 * 1024)  # keeps the heap's top in use
        for b in blocks:
            libc.free(b)
        freed = resident_mb()
        return_freed_memory()
        print(freed, resident_mb())
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    freed, returned = map(float, out.stdout.split())
    assert freed - returned > 100, (freed, returned)


@glibc
def test_malloc_arenas_can_be_capped():
    out = subprocess.run([sys.executable, "-c", "from search.memory import cap_malloc_arenas; print(cap_malloc_arenas())"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_the_search_reads_memory_after_handing_back_the_trials(monkeypatch):
    """Before each reading, the finished trial's memory is collected and trimmed; without a limit the
    watch does neither (a search with --memory-limit 0 pays nothing for it)."""
    from search import optuna_driver

    calls = []
    monkeypatch.setattr(optuna_driver, "return_freed_memory", lambda: calls.append("free"))
    monkeypatch.setattr(optuna_driver, "resident_mb", lambda: calls.append("read") or 1000.0)
    optuna_driver._MemoryWatch(100).trial_ended()
    assert calls == ["free", "read"]
    calls.clear()
    optuna_driver._MemoryWatch(None).trial_ended()
    assert calls == []


def test_the_baseline_waits_for_a_trial_that_trained(monkeypatch):
    """A first trial that failed in its first epoch never validated: the set-up it skipped would count
    as growth (a 117 MB 'step' once made a worker start a fresh process before every trial). The
    baseline is read after the first trial that trained an epoch."""
    from search import optuna_driver

    readings = iter([1000.0, 1117.0])
    monkeypatch.setattr(optuna_driver, "return_freed_memory", lambda: None)
    monkeypatch.setattr(optuna_driver, "resident_mb", lambda: next(readings))
    monkeypatch.setattr(optuna_driver, "pool_idle_mb", lambda: 0.0)
    watch = optuna_driver._MemoryWatch(100)
    watch.trial_ended(trained=False)  # failed at its first batches: no reading taken
    assert watch.baseline is None and not watch.full()
    watch.trial_ended(trained=True)  # reads 1000: the baseline
    watch.trial_ended(trained=False)  # once there is a baseline every trial counts: reads 1117
    assert (watch.baseline, watch.grown, watch.step) == (1000.0, 117.0, 117.0)
    assert watch.full()


def test_the_watch_leaves_tensorflows_idle_pool_out(monkeypatch):
    """A wider model grows TensorFlow's tensor pool (oneDNN CPUs) by its working set, which the pool
    keeps for later tensors: not growth. Memory that grows beside the pool still counts."""
    from search import optuna_driver

    def watch_over(readings: list[tuple[float, float]]):
        rss, idle = iter([r for r, _ in readings]), iter([i for _, i in readings])
        monkeypatch.setattr(optuna_driver, "return_freed_memory", lambda: None)
        monkeypatch.setattr(optuna_driver, "resident_mb", lambda: next(rss))
        monkeypatch.setattr(optuna_driver, "pool_idle_mb", lambda: next(idle))
        watch = optuna_driver._MemoryWatch(100)
        for _ in readings:
            watch.trial_ended()
        return watch

    wider = watch_over([(1000.0, 100.0), (1150.0, 245.0), (1160.0, 245.0)])  # the pool took 145 of the 150
    assert (wider.grown, wider.step) == (15.0, 10.0) and not wider.full()
    leak = watch_over([(1000.0, 100.0), (1060.0, 100.0), (1120.0, 100.0)])
    assert (leak.grown, leak.step) == (120.0, 60.0) and leak.full()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="TensorFlow's oneDNN kernels are x86's here")
def test_the_pool_reading_is_what_tensorflow_keeps_idle():
    """Under oneDNN (forced on: TensorFlow turns it on by itself only on CPUs with AVX512_VNNI and later)
    256 MiB of freed tensors stay resident in TensorFlow's pool, and pool_idle_mb reads them; with the
    tensors sent to malloc they go back and it reads nothing; without TensorFlow it reads 0."""
    script = textwrap.dedent("""
        from search.memory import pool_idle_mb, resident_mb, return_freed_memory
        import tensorflow as tf
        tf.ones([1024, 1024]).numpy()
        before = resident_mb()
        held = [tf.fill([32, 1024, 1024], float(i)) for i in range(2)]  # 2 x 128 MiB
        del held
        return_freed_memory()
        print(resident_mb() - before, pool_idle_mb())
    """)

    def run(**env: str) -> tuple[float, float]:
        out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True,
                             env=os.environ | {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"} | env)
        kept, idle = map(float, out.stdout.split()[-2:])
        return kept, idle

    kept, idle = run(TF_ONEDNN_USE_SYSTEM_ALLOCATOR="0")
    assert kept > 200 and 250 <= idle <= 270, (kept, idle)
    kept, idle = run(TF_ONEDNN_USE_SYSTEM_ALLOCATOR="1")
    assert kept < 30 and idle == 0, (kept, idle)
    out = subprocess.run([sys.executable, "-c", "from search.memory import pool_idle_mb; print(pool_idle_mb())"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    assert float(out.stdout) == 0.0


@glibc
def test_the_allocation_set_up_takes_and_leaves_a_users_choice():
    code = ("import os; from search.memory import set_up_allocation; print(set_up_allocation()); "
            "print(os.environ['TF_ONEDNN_USE_SYSTEM_ALLOCATOR'])")

    def run(**env: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                             env=_without_allocator_choice() | env)
        return out.stdout.splitlines()

    said, value = run()
    assert "capped at 1: True" in said and "trimmed: True" in said and value == "1"
    assert run(TF_ONEDNN_USE_SYSTEM_ALLOCATOR="0")[1] == "0"  # a user who keeps TensorFlow's pool keeps it


@glibc
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="TensorFlow's oneDNN kernels are x86's here")
def test_a_search_process_hands_back_large_tensors_kept_on_the_heap():
    """Set up as search.run, under oneDNN, two 128 MiB tensors come from malloc's heap (no mapping of their
    own, which glibc would unmap at the free), stay resident once freed, for the next step's tensors to
    reuse without faulting the pages in again, and go back to the system when trimmed."""
    script = textwrap.dedent("""
        from search.memory import pool_idle_mb, resident_mb, return_freed_memory, set_up_allocation
        set_up_allocation()
        import tensorflow as tf

        def heap_mb():
            for line in open("/proc/self/maps"):
                if line.rstrip().endswith("[heap]"):
                    start, end = (int(a, 16) for a in line.split()[0].split("-"))
                    return (end - start) / 2**20
            return 0.0

        tf.ones([1024, 1024]).numpy()
        return_freed_memory()
        before = resident_mb()
        held = [tf.fill([32, 1024, 1024], float(i)) for i in range(2)]  # 2 x 128 MiB
        on_heap = heap_mb()
        del held
        freed = resident_mb() - before
        return_freed_memory()
        print(on_heap, freed, resident_mb() - before, pool_idle_mb())
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True,
                         env=_without_allocator_choice() | {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    on_heap, freed, kept, idle = map(float, out.stdout.split()[-4:])
    assert on_heap > 256 and freed > 200 and kept < 30 and idle == 0, (on_heap, freed, kept, idle)


def _without_allocator_choice() -> dict[str, str]:
    """This environment less TF_ONEDNN_USE_SYSTEM_ALLOCATOR, which set_up_allocation leaves as a user gives it."""
    return {k: v for k, v in os.environ.items() if k != "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"}
