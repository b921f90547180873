"""Fault: the Celery worker `kill -9`ed while a round is in flight (real SuperLink, two nodes
through `join`, the tiny model). The platform restarts it as `make serve` does (Stack.revive); the restarted worker
re-queues the campaign's follow task (the one the dead worker held stays unacknowledged in Redis for the broker's
visibility timeout, an hour), and the campaign is followed to completion: one attempt, one Flower run, every round
once, a release, and nothing left running afterwards."""

from __future__ import annotations

import threading
import time

import pytest
from faults import assert_completed_in_one_run, assert_no_process_left, find_one, find_processes, kill9

from campaigns.models import Campaign

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def kill_worker_when_training(under, timeout: float = 240) -> tuple[threading.Thread, list]:
    """kill -9 the worker once a ClientApp works on a round: the worker holds the campaign's follow task then."""
    killed: list = []

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if find_processes(under, "clientapp"):
                killed.append(kill9(under, "worker"))
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed


def test_a_killed_worker_is_restarted_and_the_campaign_is_followed_to_completion_once(live_platform, tmp_path):
    watcher, killed = kill_worker_when_training(tmp_path)
    campaign = live_platform.run_campaign(
        "worker killed",
        timeout=600,
        train_config={"local-steps": 2, "seq-len": 32, "batch-size": 2, "threads": 1},
        num_rounds=2,
        min_nodes=2,
        round_timeout=120,
    )
    watcher.join(timeout=5)
    assert killed, "no ClientApp was ever seen training, so the worker was never killed"
    assert campaign.status == Campaign.Status.COMPLETED, campaign.status_reason

    # Restarted (not the same process), and the restarted one picked the campaign up.
    restarted = find_one(tmp_path, "worker")
    assert restarted.pid != killed[0].pid
    assert "re-queued 1 unfinished campaign" in (live_platform.stack.supervisor.log_dir / "worker.log").read_text()

    # Nothing twice: one attempt, one Flower run; every round once.
    assert_completed_in_one_run(campaign, last_round=2, participants=2)

    live_platform.stack.stop()
    assert_no_process_left(tmp_path)
