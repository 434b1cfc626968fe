import signal
import sys

import pytest

from search import interrupts


class _InterruptedWhileFinalized:
    def __del__(self):
        signal.raise_signal(signal.SIGINT)  # its KeyboardInterrupt is printed as "Exception ignored"


def test_ctrl_c_swallowed_by_a_finalizer_is_raised_at_the_next_check(monkeypatch):
    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", swallowed.append)  # where "Exception ignored" goes
    before = signal.getsignal(signal.SIGINT)
    with interrupts.catching_ctrl_c():
        _InterruptedWhileFinalized()  # collected at once: Ctrl-C lands in its __del__
        assert [type(u.exc_value) for u in swallowed] == [KeyboardInterrupt]
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    assert signal.getsignal(signal.SIGINT) is before
    interrupts.check()  # the request ends with the block


def test_a_process_that_ignores_ctrl_c_keeps_ignoring_it():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.catching_ctrl_c():
            signal.raise_signal(signal.SIGINT)
            interrupts.check()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
