"""Fault: a SuperNode `kill -9`ed in the middle of a round (real SuperLink, two nodes through
`join`, the tiny model). The round merges the other node and records the killed one as failed; `join` brings the
node back and it trains again in the next round; the campaign completes with contiguous rounds and a release,
and nothing is left running afterwards."""

from __future__ import annotations

import threading
import time

import pytest
from faults import STEPS_TO_STOP_MID_ROUND, assert_no_process_left, find_processes, kill9, round_numbers_problems

from campaigns.models import Campaign

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def kill_supernode_when_training(under, node: str, timeout: float = 240) -> tuple[threading.Thread, list]:
    """kill -9 `node`'s SuperNode (only it: its `join` stays) once a ClientApp of that node works on a round."""
    killed: list = []

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not killed:
            if find_processes(under, "clientapp", node=node):
                killed.append(kill9(under, "supernode", node=node))
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed


def test_a_supernode_killed_mid_round_is_recorded_failed_then_trains_again_once_join_restarts_it(
    live_platform, tmp_path
):
    watcher, killed = kill_supernode_when_training(tmp_path, "node-2")
    campaign = live_platform.run_campaign(
        "SuperNode killed",
        timeout=600,
        train_config={"local-steps": STEPS_TO_STOP_MID_ROUND, "seq-len": 32, "batch-size": 2, "threads": 1},
        num_rounds=2,
        min_nodes=2,
        round_timeout=60,
    )
    watcher.join(timeout=5)
    assert killed, "node-2's SuperNode was never seen training, so never killed"
    assert campaign.status == Campaign.Status.COMPLETED, campaign.status_reason

    numbers = list(campaign.rounds.order_by("number").values_list("number", flat=True))
    assert round_numbers_problems(numbers, expected_last=2) == []
    round1 = {p.node.name: p for p in campaign.rounds.get(number=1).participations.select_related("node")}
    assert round1["node-1"].error == "" and round1["node-1"].samples > 0
    assert round1["node-2"].error and round1["node-2"].samples == 0
    round2 = {p.node.name: p for p in campaign.rounds.get(number=2).participations.select_related("node")}
    assert round2["node-2"].error == "" and round2["node-2"].samples > 0, "the node did not come back"
    assert campaign.release is not None

    live_platform.stack.stop()
    assert_no_process_left(tmp_path)
