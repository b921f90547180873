"""The ServerApp's round records and held-out evaluation off the critical path: threads that work in round order.

Flower's Strategy.start calls its `evaluate_fn` between one round's merge and the next round's instructions, so
whatever that function does (save the merged adapter, report the round, upload its files, evaluate it) delays
every node. The ServerApp therefore only hands each merged round to a RoundEvaluator and returns at once; its one
thread does the work, round after round in the order they were handed in. One thread per kind of work, not a
pool: the model is a single object (it is loaded once), and the site's record of a campaign is a prefix of rounds
(a resume continues from the last round whose predecessors are all on record), so a round must never be reported
before the one before it. The ServerApp runs two: a recorder, which hands each recorded round to an evaluator that
runs at low CPU priority (`nice`).

An error in the thread is kept and raised again in the ServerApp's own thread (the same exception object, so the
ServerApp still tells an infrastructure error from a training one by its type): at its next hand-off, at its next
`check` (PatientGrid calls it while it waits for replies), or at `close`. Rounds handed in after a failure are
dropped, never reported out of order: the failed round and those after it are simply not on record, and a
resumed run redoes them.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# How many rounds may wait behind the one being evaluated before a hand-off blocks. Each holds a copy of the merged
# adapter (megabytes); a round's training normally takes longer than its evaluation, so the backlog stays near 0,
# and this only bounds memory when evaluation is the slower of the two (tiny rounds, a slow site).
DEFAULT_BACKLOG = 4

# The held-out evaluation's CPU priority (Linux nice, per thread). Where the SuperLink host also runs nodes (the demo,
# a small community on one machine) a round's training and the previous round's evaluation share the cores: at nice
# 19 the evaluation takes only what training leaves. When it falls behind by DEFAULT_BACKLOG rounds, hand-offs wait
# for it, so it can never fall behind without bound.
EVALUATION_NICE = 19


class _Stop:
    """The end-of-work marker `close` puts behind the last round."""


class RoundEvaluator(Generic[T]):
    """Runs `handle(job)` for every submitted job, in submission order, on one background thread."""

    def __init__(
        self, handle: Callable[[T], None], *, backlog: int = DEFAULT_BACKLOG, name: str = "evaluator", nice: int = 0
    ) -> None:
        self._handle = handle
        self._nice = nice
        self._queue: queue.Queue[T | _Stop] = queue.Queue(maxsize=max(1, backlog))
        self._error: BaseException | None = None
        self._closed = False
        # Daemon: if the ServerApp dies on an error nobody handles, its exit must not hang on a pending upload.
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def error(self) -> BaseException | None:
        return self._error

    def check(self) -> None:
        """Raise the thread's error, if it had one (in the caller's thread)."""
        if self._error is not None:
            raise self._error

    def submit(self, job: T) -> None:
        """Queue one round (blocks only while `backlog` rounds already wait). Raises the thread's earlier error."""
        if self._closed:
            raise RuntimeError("the round evaluator is closed")
        self.check()
        self._queue.put(job)

    def close(self, *, raise_error: bool = True, timeout: float | None = None) -> None:
        """Let the thread finish every queued round, then stop it; raise its error unless `raise_error` is False.

        `timeout` (seconds) bounds the wait; a thread still busy after it raises TimeoutError.
        """
        if not self._closed:
            self._closed = True
            self._queue.put(_Stop())
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the round evaluator did not finish its rounds within {timeout}s")
        if raise_error:
            self.check()

    def _lower_priority(self) -> None:
        """Raise this thread's nice value by `nice` (Linux keeps one per thread; the process's other threads and its
        torch work on them keep theirs). Best effort: elsewhere it stays at the process's priority."""
        if self._nice <= 0:
            return
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self._nice))
        except (AttributeError, OSError) as exc:
            log.warning("%s: could not lower its CPU priority (%s); it runs at the process's", self._thread.name, exc)

    def _loop(self) -> None:
        self._lower_priority()
        while True:
            job = self._queue.get()
            if isinstance(job, _Stop):
                return
            if self._error is not None:
                continue  # after a failure nothing more is recorded: later rounds must not overtake the failed one
            started = time.monotonic()
            try:
                self._handle(job)
            except BaseException as exc:  # noqa: BLE001 - raised again in the ServerApp's thread (check/submit/close)
                log.exception("the round evaluator failed; later rounds are not recorded")
                self._error = exc
            else:
                log.info(
                    "%s: round done in %.1fs (%d more queued)",
                    self._thread.name,
                    time.monotonic() - started,
                    self._queue.qsize(),
                )
