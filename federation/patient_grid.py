"""A Grid that rides out a SuperLink's passing server errors instead of failing the whole campaign.

Flower's SuperLink keeps its state in SQLite. Under load (many nodes writing at once, a starved CPU) a request can
fail with HTTP 500 ('database is locked'), and Flower's own retry does not retry a 500: one such answer to the
ServerApp's `pull-messages` ends the run, and with it the campaign. The ServerApp therefore talks to the
SuperLink through this wrapper, which repeats the requests that only read or collect (node ids, replies) after a
short wait. Pushing instructions is left as Flower does it: repeating a push could send a round twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import httpx
from flwr.app import Message

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_WAITS = (0.5, 1.0, 2.0, 4.0, 8.0, 8.0)  # seconds; about 24 s in all before the error goes up
# How often the ServerApp asks the SuperLink for replies while a round trains. Flower's own loop waits 3 s, which
# the round's last reply waits out too (1.5 s on average, every round). One pull is one small local request from
# one process per campaign, so 0.5 s costs the SuperLink little and leaves 0.25 s on average.
POLL_SECONDS = 0.5


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (500, 502, 503, 504)


def patiently(call: Callable[[], T], what: str, waits: Iterable[float] = RETRY_WAITS) -> T:
    """`call()`, repeated after each wait in `waits` while it fails with a transient server error."""
    for wait in waits:
        try:
            return call()
        except Exception as exc:
            if not _transient(exc):
                raise
            log.warning("SuperLink answered %s to %s; trying again in %.1fs", exc.response.status_code, what, wait)
            time.sleep(wait)
    return call()


class PatientGrid:
    """Wraps the ServerApp's Grid; everything not defined here goes straight to Flower's."""

    def __init__(
        self,
        grid: Any,
        waits: Iterable[float] = RETRY_WAITS,
        poll_seconds: float = POLL_SECONDS,
        check: Callable[[], None] | None = None,
    ) -> None:
        """`check` is called at every poll while replies are awaited; what it raises ends the wait (the ServerApp
        passes its evaluator's `check`, so that a round that could not be recorded stops the run now, not after
        the next round has trained)."""
        self._grid = grid
        self._waits = tuple(waits)
        self._poll = poll_seconds
        self._check = check

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def get_node_ids(self) -> Iterable[int]:
        return patiently(lambda: list(self._grid.get_node_ids()), "get-nodes", self._waits)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        ids = list(message_ids)
        return patiently(lambda: list(self._grid.pull_messages(ids)), "pull-messages", self._waits)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Flower's loop (push once, then pull every few seconds until all replied or the timeout), patient pulls."""
        pending = set(self._grid.push_messages(messages))
        end = time.time() + (timeout or 0.0)
        replies: list[Message] = []
        while pending and (timeout is None or time.time() < end):
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if pending:
                time.sleep(self._poll)
            if self._check is not None:
                self._check()
        return replies
