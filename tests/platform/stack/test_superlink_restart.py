"""A SuperLink that dies comes back with every admitted key registered again, and the enrolled nodes reconnect."""

from __future__ import annotations

import os
import signal
import time

import pytest

from bayanihan_site.superlink import superlink_client
from community.models import Node
from federation import control

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
RECONNECT_SECONDS = 240  # a node's retries back off; Flower also refuses re-activation for ≈ 60 s after a crash


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def online_ids() -> set[str]:
    try:
        return {str(i) for i in control.online_node_ids(superlink_client())}
    except Exception:  # the SuperLink is restarting
        return set()


def enrolled_ids() -> set[str]:
    return set(Node.objects.filter(status=Node.Status.ACTIVE).values_list("flwr_node_id", flat=True))


def test_superlink_killed_is_restarted_keys_re_registered_and_nodes_reconnect(live_platform):
    stack = live_platform.stack
    wait_for(lambda: len(enrolled_ids()) == 2 and enrolled_ids() <= online_ids(), 120, "both nodes online")
    before = enrolled_ids()

    os.kill(stack.supervisor.pid("superlink"), signal.SIGKILL)
    wait_for(lambda: stack.supervisor.returncode("superlink") is not None, 10, "the SuperLink to die")
    started = time.monotonic()
    assert stack.revive() == ["superlink"]  # what `make serve` does every few seconds

    after = enrolled_ids()
    # In-memory state: the keys were registered anew, under new ids the platform now records.
    assert len(after) == 2 and not after & before
    wait_for(lambda: after <= online_ids(), RECONNECT_SECONDS, "the enrolled nodes to reconnect through the proxy")
    print(f"nodes back online {time.monotonic() - started:.0f}s after the restart")
    assert stack.revive() == []
