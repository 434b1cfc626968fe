"""Ctrl-C that stops a search where stopping is safe.

Python's own Ctrl-C raises KeyboardInterrupt wherever the main thread happens to be. In a search
that is often somewhere that cannot take it:

- a finalizer run by the garbage collector (TensorFlow's objects have many): Python prints
  "Exception ignored in ..." and carries on as if nothing happened, so a worker ran the rest of its
  trials;
- the inside of a library's bookkeeping, between taking something and handing it back: Optuna
  starts a trial's heartbeat thread in a `with` block's `__enter__`, and an exception raised there
  (or in `__exit__` before the thread is told to stop) leaves a thread that never ends, and the
  process waits for it at exit forever.

Inside `catching_ctrl_c()` the first Ctrl-C only records the request; `check()`, called after every
training step, between epochs and before each trial, raises KeyboardInterrupt there, from our own
code, where the trial is then marked failed as usual. A second Ctrl-C raises at once, wherever the
process is, for a search stuck somewhere no check is reached.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Iterator

_requested = False
_announce = True
NOTICE = b"\nCtrl-C: stopping after the current training step (press it again to stop at once)\n"


def _on_sigint(signum, frame) -> None:
    global _requested
    if _requested:
        raise KeyboardInterrupt
    _requested = True
    if _announce:
        try:
            os.write(2, NOTICE)  # not print(): the signal may have landed inside a print
        except OSError:
            pass


def requested() -> bool:
    """Whether Ctrl-C came inside `catching_ctrl_c()` and has not been acted on yet."""
    return _requested


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came: call it where stopping is safe."""
    if _requested:
        raise KeyboardInterrupt


@contextmanager
def catching_ctrl_c(*, announce: bool = True) -> Iterator[None]:
    """Turn Ctrl-C into a request that `check()` acts on while the block runs (a second Ctrl-C
    raises at once). `announce=False` leaves the notice to someone else (a worker's parent). A
    process that ignores SIGINT (a shell's background job) keeps ignoring it."""
    global _requested, _announce
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        yield
        return
    _requested, _announce = False, announce
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        _requested = False
