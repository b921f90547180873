"""The ServerApp's task heartbeat (Flower's own sender and request function) against a real HTTP server that
answers 500 a few times, as a SuperLink with a locked SQLite state does under load."""

from __future__ import annotations

import time

import httpx
import pytest
from flwr.proto.runtime_pb2 import SendTaskHeartbeatResponse
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.runtime import RuntimeHttpClient

from federation import task_heartbeat


def heartbeat_client(flaky_server) -> RuntimeHttpClient:
    flaky_server.ok = lambda method, path, body: (200, SendTaskHeartbeatResponse(success=True).SerializeToString())
    address = flaky_server.url.removeprefix("http://")
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None, interceptors=[]
    )


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def beats_answered_ok(flaky_server) -> int:
    return sum(1 for _, path, status in flaky_server.seen if path.endswith("send-task-heartbeat") and status == 200)


def test_flowers_own_heartbeat_dies_on_a_500(flaky_server):
    """Why the guard exists (flwr 1.42): one 500 ends Flower's heartbeat thread; the run then fails."""
    flaky_server.failures = 1
    sender = HeartbeatSender(make_task_heartbeat_fn_http(heartbeat_client(flaky_server)))
    sender.start()
    assert wait_for(lambda: not sender._thread.is_alive(), 10)
    assert beats_answered_ok(flaky_server) == 0


def test_a_guarded_heartbeat_rides_out_several_500s(flaky_server):
    flaky_server.failures = 3
    sender = HeartbeatSender(task_heartbeat.patient(make_task_heartbeat_fn_http(heartbeat_client(flaky_server))))
    sender.start()
    try:
        assert wait_for(lambda: beats_answered_ok(flaky_server) == 1, 30), flaky_server.seen
        assert [status for _, _, status in flaky_server.seen] == [500, 500, 500, 200]
        assert sender.is_running
    finally:
        sender.stop()


def test_a_heartbeat_thread_a_500_already_killed_is_revived(flaky_server):
    """The sender runs before the ServerApp's code is imported: a 500 may have ended it already."""
    flaky_server.failures = 1
    sender = HeartbeatSender(make_task_heartbeat_fn_http(heartbeat_client(flaky_server)))
    sender.start()
    assert wait_for(lambda: not sender._thread.is_alive(), 10)
    assert task_heartbeat.guard_task_heartbeats() >= 1
    try:
        assert wait_for(lambda: beats_answered_ok(flaky_server) == 1, 10), flaky_server.seen
        assert sender.is_running
    finally:
        sender.stop()


def test_other_errors_still_end_the_heartbeat(flaky_server):
    """A 401 (the SuperLink no longer knows this task) is not passing: it is not retried."""
    flaky_server.failures, flaky_server.status = 1, 401
    beat = task_heartbeat.patient(make_task_heartbeat_fn_http(heartbeat_client(flaky_server)))
    with pytest.raises(httpx.HTTPStatusError):
        beat()


def test_the_flower_internals_the_guard_relies_on_are_the_pinned_ones():
    task_heartbeat.self_test()
