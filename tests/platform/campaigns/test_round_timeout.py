"""A node that drops in the middle of a round: the round merges the rest and records the missing node as failed,
at the latest when the campaign's round timeout has passed (real SuperLink, two SuperNodes through `join`, the
tiny model). Here the SuperLink notices the stopped node and answers for it ("Node Unavailable") before the
timeout; a reply lost on the way is covered by the timeout (tests/federation/test_strategy.py)."""

from __future__ import annotations

import threading
import time

import psutil
import pytest
from faults import STEPS_TO_STOP_MID_ROUND

from campaigns.models import Campaign

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def training_pids(home: str) -> list[int]:
    """The ClientApp processes working for the node whose home is `home` (they run in its folder)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline, cwd = proc.info["cmdline"] or [], proc.info["cwd"] or ""
        # The node's own runtime (`python -m federation.node_runtime`, behind its `flwr-clientapp` on PATH), or the
        # task launcher's per-message client that stands in for it where a warm worker runs.
        app = any(part in ("federation.node_runtime", "federation.task_launcher") for part in cmdline) or any(
            "flwr-clientapp" in part for part in cmdline
        )
        app = app and "serve" not in cmdline  # the launcher itself (and its forked tasks) work for every node
        if app and cwd.startswith(home):
            found.append(proc.pid)
    return found


def drop_when_training(stack, name: str, timeout: float = 240) -> threading.Thread:
    """Stop node `name` (its join, SuperNode and app processes) once it has started on a round's instruction."""
    home = str(stack.state_dir / "nodes" / name)

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if training_pids(home):
                stack.supervisor.stop(f"node-{name}", timeout=10)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_node_that_drops_mid_round_is_recorded_as_failed_and_the_round_merges_the_rest(live_platform):
    watcher = drop_when_training(live_platform.stack, "node-2")
    campaign = live_platform.run_campaign(
        "Dropout",
        train_config={"local-steps": STEPS_TO_STOP_MID_ROUND, "seq-len": 32, "batch-size": 2, "threads": 1},
        num_rounds=1,
        min_nodes=2,
        round_timeout=30,
    )
    watcher.join(timeout=5)
    assert campaign.status == Campaign.Status.COMPLETED, campaign.status_reason
    round1 = campaign.rounds.get(number=1)
    assert (round1.participants, round1.failures) == (1, 1)
    by_node = {p.node.name: p for p in round1.participations.select_related("node")}
    assert by_node["node-1"].error == "" and by_node["node-1"].samples > 0
    assert by_node["node-2"].error  # Flower's word for a lost node, or "no reply before the round timeout"
    assert by_node["node-2"].samples == 0
