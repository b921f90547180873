"""The ServerApp's Grid wrapper: a passing SuperLink 500 delays a round instead of ending the campaign.

A real SuperLink cannot be made to answer 'database is locked' on cue, so the grid below stands in for Flower's
HttpGrid: it answers like the SuperLink did under load (HTTP 500 on pull-messages) and records every call.
"""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest

from federation.patient_grid import PatientGrid


def http_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://127.0.0.1:9/v1/runtime/pull-messages")
    return httpx.HTTPStatusError(f"{status}", request=request, response=httpx.Response(status, request=request))


def reply_to(message_id: str) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=message_id))


class FlakyGrid:
    def __init__(self, failures: list[int]) -> None:
        self.failures = failures  # status codes the next pulls answer with, in order
        self.pushes = 0
        self.pulls = 0
        self.run_id = 7

    def push_messages(self, messages):
        self.pushes += 1
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        self.pulls += 1
        if self.failures:
            raise http_error(self.failures.pop(0))
        return [reply_to(i) for i in sorted(message_ids)]

    def get_node_ids(self):
        if self.failures:
            raise http_error(self.failures.pop(0))
        return [1, 2]


def test_replies_arrive_after_the_superlink_answered_500_twice():
    inner = FlakyGrid([500, 500])
    grid = PatientGrid(inner, waits=(0, 0, 0), poll_seconds=0)
    replies = grid.send_and_receive(["a", "b"], timeout=10)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
    assert inner.pushes == 1  # instructions are never sent twice
    assert inner.pulls == 3


def test_a_client_error_is_not_retried():
    inner = FlakyGrid([400])
    with pytest.raises(httpx.HTTPStatusError):
        PatientGrid(inner, waits=(0, 0, 0), poll_seconds=0).send_and_receive(["a"], timeout=10)
    assert inner.pulls == 1


def test_it_gives_up_when_the_superlink_keeps_failing():
    inner = FlakyGrid([500] * 5)
    with pytest.raises(httpx.HTTPStatusError):
        PatientGrid(inner, waits=(0, 0), poll_seconds=0).get_node_ids()
    assert inner.failures == [500, 500]  # three tries: the first and one after each wait


def test_anything_else_goes_to_flowers_grid():
    assert PatientGrid(FlakyGrid([])).run_id == 7


def test_an_error_of_the_check_ends_the_wait_for_replies():
    """The ServerApp passes its evaluator's check: a round that could not be recorded stops the run at the next
    poll, instead of after the round being trained."""

    class Silent(FlakyGrid):
        def pull_messages(self, message_ids):
            self.pulls += 1
            return []  # nobody has replied yet

    inner = Silent([])
    polls = []

    def check() -> None:
        polls.append(1)
        if len(polls) == 3:
            raise RuntimeError("round 4 could not be recorded")

    grid = PatientGrid(inner, waits=(0,), poll_seconds=0, check=check)
    with pytest.raises(RuntimeError, match="could not be recorded"):
        grid.send_and_receive(["a"], timeout=60)
    assert inner.pulls == 3
