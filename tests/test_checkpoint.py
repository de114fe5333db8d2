import os
import signal

import pytest

from rlhfkit.checkpoint import ForcedStop, step_completes


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_inside_a_step_lets_the_step_finish_then_stops(python_ctrl_c):
    finished = []
    with pytest.raises(KeyboardInterrupt) as stop:
        with step_completes():
            ctrl_c()
            finished.append("after the signal")
    assert finished == ["after the signal"] and not isinstance(stop.value, ForcedStop)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the usual Ctrl-C is back


def test_a_second_ctrl_c_stops_at_once(python_ctrl_c):
    finished = []
    with pytest.raises(ForcedStop):
        with step_completes():
            ctrl_c()
            ctrl_c()
            finished.append("never")
    assert finished == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_step_without_ctrl_c_raises_nothing():
    with step_completes():
        pass


def test_a_process_that_ignores_ctrl_c_keeps_ignoring_it():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with step_completes():
            ctrl_c()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
