"""Fault: the SuperLink `kill -9`ed mid-campaign (real SuperLink behind its proxy, two nodes
through `join`, the tiny model). The platform restarts it as `make serve` does (Stack.revive), re-registers the
nodes' keys, and the campaign resumes from its last merged round as a new Flower run: it completes with every round
once, two attempts on record, and nothing left running afterwards."""

from __future__ import annotations

import threading
import time

import pytest
from faults import assert_no_process_left, kill9, round_numbers_problems

from campaigns.models import Campaign, Round

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def kill_superlink_after_round(under, number: int, timeout: float = 300) -> tuple[threading.Thread, list]:
    killed: list = []

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if Round.objects.filter(number=number).exclude(adapter_files={}).exists():
                killed.append(kill9(under, "superlink"))
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed


def test_a_killed_superlink_is_restarted_and_the_campaign_resumes_from_its_last_merged_round(live_platform, tmp_path):
    watcher, killed = kill_superlink_after_round(tmp_path, 1)
    campaign = live_platform.run_campaign(
        "SuperLink killed",
        timeout=600,
        train_config={"local-steps": 2, "seq-len": 32, "batch-size": 2, "threads": 1},
        num_rounds=3,
        min_nodes=2,
        round_timeout=120,
    )
    watcher.join(timeout=5)
    assert killed, "the SuperLink was never killed"
    assert campaign.status == Campaign.Status.COMPLETED, campaign.status_reason

    numbers = list(campaign.rounds.order_by("number").values_list("number", flat=True))
    assert round_numbers_problems(numbers, expected_last=3) == []
    attempts = list(campaign.attempts.order_by("number"))
    assert len(attempts) >= 2
    assert (attempts[0].outcome, attempts[0].failure_kind) == ("failed", "infrastructure")
    assert attempts[-1].outcome == "completed" and attempts[-1].from_round >= 1
    # The nodes came back under the new ids the restarted SuperLink gave their keys, and trained after it.
    last = campaign.rounds.get(number=3)
    assert last.participants == 2, list(last.participations.values_list("node__name", "error"))
    assert campaign.release is not None

    live_platform.stack.stop()
    assert_no_process_left(tmp_path)
