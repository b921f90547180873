"""The ServerApp's round evaluator: rounds recorded in order, off the caller's thread, errors raised in the caller."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from federation.evaluator import RoundEvaluator


def test_rounds_are_handled_in_submission_order_on_one_other_thread():
    seen: list[tuple[int, str]] = []

    def handle(n: int) -> None:
        time.sleep(0.01 * (5 - n))  # early rounds slowest: a pool would finish them last
        seen.append((n, threading.current_thread().name))

    evaluator: RoundEvaluator[int] = RoundEvaluator(handle, backlog=10)
    for n in range(5):
        evaluator.submit(n)
    evaluator.close()
    assert [n for n, _ in seen] == [0, 1, 2, 3, 4]
    assert {name for _, name in seen} == {"evaluator"}  # one thread, and not the caller's
    assert threading.current_thread().name != "evaluator"


def test_submit_returns_while_the_round_is_still_being_handled():
    release = threading.Event()
    done: list[int] = []

    def handle(n: int) -> None:
        release.wait(10)
        done.append(n)

    evaluator: RoundEvaluator[int] = RoundEvaluator(handle)
    evaluator.submit(1)  # would block for 10 s if it waited for the evaluation
    assert done == []
    release.set()
    evaluator.close()
    assert done == [1]


def test_close_waits_for_every_queued_round():
    done: list[int] = []
    evaluator: RoundEvaluator[int] = RoundEvaluator(lambda n: (time.sleep(0.02), done.append(n)), backlog=3)
    for n in range(3):
        evaluator.submit(n)
    evaluator.close()
    assert done == [0, 1, 2]


def test_an_error_is_raised_in_the_caller_with_its_own_type_and_later_rounds_are_dropped():
    done: list[int] = []

    def handle(n: int) -> None:
        if n == 1:
            raise ValueError("round 1's adapter did not save")
        done.append(n)

    evaluator: RoundEvaluator[int] = RoundEvaluator(handle, backlog=10)
    evaluator.submit(0)
    evaluator.submit(1)
    evaluator.submit(2)  # queued before the failure was known: never handled, so never reported out of order
    with pytest.raises(ValueError, match="did not save"):
        evaluator.close()
    assert done == [0]


def test_an_infrastructure_error_keeps_its_type_so_the_serverapp_still_reports_it_as_infrastructure():
    """server_app.main tells the kinds apart by type (INFRASTRUCTURE_ERRORS includes requests' errors)."""

    def handle(n: int) -> None:
        raise requests.ConnectionError("site unreachable")

    evaluator: RoundEvaluator[int] = RoundEvaluator(handle)
    evaluator.submit(0)
    with pytest.raises(requests.ConnectionError, match="site unreachable"):
        evaluator.close()


def test_the_next_hand_off_and_check_raise_the_earlier_error():
    failed = threading.Event()

    def handle(n: int) -> None:
        failed.set()
        raise RuntimeError("disk full")

    evaluator: RoundEvaluator[int] = RoundEvaluator(handle)
    evaluator.check()  # nothing wrong yet
    evaluator.submit(0)
    failed.wait(5)
    evaluator._thread.join(0.2)  # let the thread store the error it raised
    with pytest.raises(RuntimeError, match="disk full"):
        evaluator.check()
    with pytest.raises(RuntimeError, match="disk full"):
        evaluator.submit(1)
    evaluator.close(raise_error=False)  # what the ServerApp does while another error is on its way up


def test_a_full_backlog_makes_the_hand_off_wait():
    release = threading.Event()
    evaluator: RoundEvaluator[int] = RoundEvaluator(lambda n: release.wait(10), backlog=1)
    evaluator.submit(0)  # being handled
    time.sleep(0.05)
    evaluator.submit(1)  # waits in the backlog
    blocked = threading.Thread(target=evaluator.submit, args=(2,))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # memory stays bounded when evaluation is slower than training
    release.set()
    blocked.join(5)
    assert not blocked.is_alive()
    evaluator.close()


def test_close_with_a_timeout_says_the_evaluator_is_still_busy():
    release = threading.Event()
    evaluator: RoundEvaluator[int] = RoundEvaluator(lambda n: release.wait(10))
    evaluator.submit(0)
    with pytest.raises(TimeoutError):
        evaluator.close(timeout=0.05)
    release.set()
    evaluator.close()


def test_a_niced_evaluator_runs_its_rounds_at_low_cpu_priority_and_leaves_the_callers_alone():
    """Where the SuperLink host also trains, evaluation must take only the CPU training leaves (Linux: per thread)."""
    import os

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: list[int] = []
    evaluator: RoundEvaluator[int] = RoundEvaluator(
        lambda n: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())), nice=19
    )
    evaluator.submit(1)
    evaluator.close()
    assert seen == [19]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # the caller's thread unchanged
    plain: RoundEvaluator[int] = RoundEvaluator(
        lambda n: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    )
    plain.submit(2)
    plain.close()
    assert seen[-1] == before
