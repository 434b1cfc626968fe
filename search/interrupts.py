"""Ctrl-C that is never lost.

Python raises KeyboardInterrupt wherever the main thread is when the signal lands. When that is a
finalizer (a weakref callback or `__del__` run by the garbage collector, and TensorFlow's objects
have many) Python prints "Exception ignored in ..." and carries on as if nothing happened: a worker
would then run the rest of its trials. Inside `catching_ctrl_c()`, Ctrl-C is also remembered, and
`check()`, called between epochs and between trials, raises it again if it was swallowed.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

_requested = False


def _on_sigint(signum, frame) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came and was swallowed where it landed."""
    if _requested:
        raise KeyboardInterrupt


@contextmanager
def catching_ctrl_c() -> Iterator[None]:
    """Remember Ctrl-C for `check()` while the block runs. A process that ignores SIGINT (a shell's
    background job) keeps ignoring it."""
    global _requested
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        yield
        return
    _requested = False
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        _requested = False
