"""The ServerApp's own task heartbeat, made to ride out a SuperLink's passing HTTP 500s (Flower internals).

Why internals: `flwr-serverapp` (flwr/superlink/runtime/run_serverapp.py) starts a `HeartbeatSender` with
`make_task_heartbeat_fn_http(...)` before it even imports this app. That function retries transport errors, 503 and
504 only; a 500 (the SuperLink's SQLite answering 'database is locked' under load) or a 502 from a proxy is raised
inside the heartbeat thread, which dies; about 60 s later the SuperLink fails the run ("No heartbeat received from
the task") and the campaign with it. Flower offers no hook, and the sender already runs when our code gets control,
so we find it in the process, wrap its function so that those answers count as a failed beat (which Flower's own
sender retries with backoff) and restart its thread if a 500 already killed it.

Pinned to flwr==1.42.0: `self_test()` checks the internals this relies on and fails loudly if they changed.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx

log = logging.getLogger(__name__)

FLWR_VERSION = "1.42.0"
TRANSIENT_STATUS = (500, 502, 503, 504)
_MARK = "_bayanihan_patient"


def self_test() -> None:
    """Fail with a clear message if the Flower internals wrapped here are not the ones this code was written for."""
    import importlib

    import flwr
    from flwr.supercore.heartbeat import HeartbeatSender

    run_serverapp = importlib.import_module("flwr.superlink.runtime.run_serverapp")  # the module, not its function

    problems = []
    if flwr.__version__ != FLWR_VERSION:
        problems.append(f"flwr is {flwr.__version__}, this code was checked against {FLWR_VERSION}")
    sender = HeartbeatSender(lambda: True)
    for attribute in ("heartbeat_fn", "_thread", "_stop_event", "_run"):
        if not hasattr(sender, attribute):
            problems.append(f"flwr.supercore.heartbeat.HeartbeatSender has no {attribute}")
    if getattr(run_serverapp, "HeartbeatSender", None) is not HeartbeatSender:
        problems.append("flwr-serverapp no longer starts flwr.supercore.heartbeat.HeartbeatSender")
    if problems:
        raise RuntimeError(
            "Flower internals changed; the ServerApp's task-heartbeat guard (federation/task_heartbeat.py) "
            "needs a review: " + "; ".join(problems)
        )


def patient(beat: Callable[[], bool]) -> Callable[[], bool]:
    """`beat` with HTTP 500/502/503/504 answered as a failed beat (retried by the sender) instead of an exception."""
    if getattr(beat, _MARK, False):
        return beat

    def wrapped() -> bool:
        try:
            return beat()
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code not in TRANSIENT_STATUS:
                raise
            log.warning("SuperLink answered %s to the task heartbeat; trying again", exc.response.status_code)
            return False

    setattr(wrapped, _MARK, True)
    return wrapped


def guard(sender: Any) -> bool:
    """Make one HeartbeatSender patient; restart its thread if an error already ended it. True if restarted."""
    sender.heartbeat_fn = patient(sender.heartbeat_fn)
    if sender._thread.is_alive() or sender._stop_event.is_set() or sender._thread.ident is None:
        return False  # running, stopped on purpose, or never started: nothing to revive
    log.warning("the task heartbeat thread had died (an HTTP error); restarting it")
    sender._thread = threading.Thread(target=sender._run, daemon=True)
    sender._thread.start()
    return True


def guard_task_heartbeats() -> int:
    """Guard every Flower HeartbeatSender in this process; returns how many there are."""
    from flwr.supercore.heartbeat import HeartbeatSender

    self_test()
    senders = [obj for obj in gc.get_objects() if isinstance(obj, HeartbeatSender)]
    for sender in senders:
        guard(sender)
    return len(senders)
