"""The ServerApp killed mid-campaign (kill -9 after round 1 is on record): the SuperLink fails the run once its
task heartbeat stops, and the campaign resumes by itself as a new Flower run from round 1's merged adapter,
completing with every round once (real SuperLink, two SuperNodes through `join`, the tiny model)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from campaigns.models import Campaign, Round

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def serverapp_pids() -> list[int]:
    """This test's `flwr-serverapp` processes: they descend from the SuperLink the fixture started."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if any("flwr-serverapp" in part for part in proc.cmdline()):
                found.append(proc.pid)
        except psutil.Error:  # gone, or a zombie its parent has not reaped yet
            continue
    return found


def kill_serverapp_after_round(number: int, timeout: float = 300) -> threading.Thread:
    killed: list[int] = []

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if Round.objects.filter(number=number).exclude(adapter_files={}).exists():
                for pid in serverapp_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                if killed:
                    return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.killed = killed  # type: ignore[attr-defined]
    thread.start()
    return thread


def test_a_killed_serverapp_is_resumed_from_the_last_merged_round_and_the_campaign_completes(live_platform):
    watcher = kill_serverapp_after_round(1)
    campaign = live_platform.run_campaign(
        "Resume",
        timeout=480,
        train_config={"local-steps": 2, "seq-len": 32, "batch-size": 2, "threads": 1},
        num_rounds=3,
        min_nodes=2,
    )
    watcher.join(timeout=5)
    assert watcher.killed, "the ServerApp was never killed"  # type: ignore[attr-defined]
    assert campaign.status == Campaign.Status.COMPLETED, campaign.status_reason
    assert list(campaign.rounds.order_by("number").values_list("number", flat=True)) == [0, 1, 2, 3]
    assert all(r.participants == 2 for r in campaign.rounds.filter(number__gte=1))
    first, second = campaign.attempts.order_by("number")
    assert (first.outcome, first.failure_kind, first.from_round) == ("failed", "infrastructure", 0)
    assert (second.trigger, second.outcome, second.from_round) == ("auto-resume", "completed", 1)
    assert first.flwr_run_id != second.flwr_run_id
    provenance = json.loads((Path(campaign.release.path) / "provenance.json").read_text())
    assert [(a["attempt"], a["from_round"], a["outcome"]) for a in provenance["attempts"]] == [
        (1, 0, "failed"),
        (2, 1, "completed"),
    ]
    assert [r["round"] for r in provenance["rounds"]] == [0, 1, 2, 3]
    deadline = time.monotonic() + 60  # the last run's ServerApp exits once it has pushed its output
    while serverapp_pids() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not serverapp_pids()
