"""Fault: the SuperLink answers HTTP 500 (what its SQLite state did under load: "database is
locked") to nodes' pulls, heartbeats and a reply push, in the middle of a campaign. Nodes reach the SuperLink
through tests/platform/faults.py's FaultProxy (TLS with the SuperLink's own certificate), which injects them.
The nodes ride through: the campaign completes with contiguous rounds, and both nodes train in its last round
(a reply lost to a 500 may cost a node one round, never the campaign); nothing is left running afterwards."""

from __future__ import annotations

import threading
import time

import pytest
from faults import Fault, FaultProxy, assert_no_process_left, round_numbers_problems

from campaigns.models import Campaign

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def superlink_500s() -> list[Fault]:
    return [
        Fault(r"^/v1/fleet/pull-messages", times=3),
        Fault(r"^/v1/fleet/send-node-heartbeat", times=2),
        Fault(r"^/v1/fleet/push-messages", times=1),
    ]


class Front:
    """Puts a FaultProxy between the nodes and the SuperLink (see the `superlink_front` fixture in conftest)."""

    proxy: FaultProxy | None = None

    def __call__(self, address: str, tls: dict) -> str:
        self.proxy = FaultProxy(
            f"https://{address}", certfile=tls["cert"], keyfile=tls["key"], target_ca=tls["ca"], lifetime=900
        ).start()
        return self.proxy.address


@pytest.fixture
def superlink_front():
    front = Front()
    yield front
    if front.proxy is not None:
        front.proxy.stop()


def inject_after_first_reply(proxy: FaultProxy, faults: list[Fault], timeout: float = 300) -> threading.Thread:
    """Once a node has pushed its first reply (round 1 is under way), the SuperLink starts answering 500s."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proxy.forwarded(r"^/v1/fleet/push-messages"):
                for fault in faults:
                    proxy.add(fault)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_nodes_ride_through_superlink_500s_and_the_campaign_completes(live_platform, superlink_front, tmp_path):
    proxy = superlink_front.proxy
    assert proxy is not None and proxy.running
    faults = superlink_500s()
    watcher = inject_after_first_reply(proxy, faults)
    campaign = live_platform.run_campaign(
        "SuperLink 500s",
        timeout=900,
        train_config={"local-steps": 2, "seq-len": 32, "batch-size": 2, "threads": 1},
        num_rounds=3,
        min_nodes=2,
        round_timeout=60,
    )
    watcher.join(timeout=5)
    assert [f.injected for f in faults] == [f.times for f in faults], "not every fault was injected"
    assert campaign.status == Campaign.Status.COMPLETED, campaign.status_reason

    numbers = list(campaign.rounds.order_by("number").values_list("number", flat=True))
    assert round_numbers_problems(numbers, expected_last=3) == []
    last = {p.node.name: p for p in campaign.rounds.get(number=3).participations.select_related("node")}
    assert sorted(last) == ["node-1", "node-2"]
    assert all(p.error == "" and p.samples > 0 for p in last.values()), {n: p.error for n, p in last.items()}
    assert campaign.release is not None

    live_platform.stack.stop()
    assert_no_process_left(tmp_path)
