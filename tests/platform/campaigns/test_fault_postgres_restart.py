"""Fault: PostgreSQL restarted mid-round (real SuperLink, two nodes through `join`, the tiny model,
the platform's database on a local PostgreSQL cluster this test may stop and start). The cluster is down for
DOWN_SECONDS while round 1 trains, so the round's report and the campaign's follow task meet a dead database; every
kept connection (web, worker, this process) is dead afterwards. The platform recovers without staff action: the
ServerApp's Reporter retries the site's 500s, the worker's follow task retries the database error and reconnects,
and the campaign completes in its one attempt with every round once, a release, and nothing left running.

Only meaningful on PostgreSQL (CI runs the suite there): skipped on SQLite, and where this process cannot control
the cluster (no `pg_ctlcluster`, not root, a remote database)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest
from django.db import connection, connections
from faults import assert_completed_in_one_run, assert_no_process_left, find_processes

from campaigns.models import Campaign, Round

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

DOWN_SECONDS = 15.0


@pytest.fixture
def local_cluster() -> tuple[str, str]:
    """(version, name) of the local cluster serving the test database; skips the test where there is none to control
    (before the platform starts: a test listing it first skips in no time)."""
    s = connection.settings_dict
    if s["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip(f"restarting the database is a PostgreSQL fault; this run uses {s['ENGINE']}")
    if (s.get("HOST") or "localhost") not in ("localhost", "127.0.0.1", "::1", "") and not s["HOST"].startswith("/"):
        pytest.skip(f"the database is on {s['HOST']}, not a local cluster this test can restart")
    if not shutil.which("pg_ctlcluster") or not shutil.which("pg_lsclusters"):
        pytest.skip("pg_ctlcluster/pg_lsclusters not available: cannot restart the PostgreSQL cluster")
    if os.geteuid() != 0:
        pytest.skip("restarting the PostgreSQL cluster needs root (pg_ctlcluster)")
    port = str(s.get("PORT") or 5432)
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        version, name, cluster_port, status, *_ = line.split()
        if cluster_port == port and status == "online":
            return version, name
    pytest.skip(f"no online local cluster on port {port} (pg_lsclusters: {listing.strip()!r})")


def pg_ctl(version: str, name: str, action: str) -> None:
    # --skip-systemctl-redirect: act on the cluster directly, as .ci/run starts it (no systemd in containers).
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action], check=True, capture_output=True
    )


def wait_ready(timeout: float = 60) -> None:
    port = str(connection.settings_dict.get("PORT") or 5432)
    deadline = time.monotonic() + timeout
    while subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", port, "-q"]).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"PostgreSQL not ready {timeout:.0f}s after its restart")
        time.sleep(0.5)


def restart_when_training(under, cluster: tuple[str, str], timeout: float = 240) -> tuple[threading.Thread, dict]:
    """Stop the cluster once a ClientApp trains, start it again DOWN_SECONDS later; note the rounds on record then."""
    done: dict = {}

    def watch() -> None:
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if find_processes(under, "clientapp"):
                    recorded = Round.objects.exclude(eval_loss=None).values_list("number", flat=True)
                    done["rounds_before"] = sorted(recorded)
                    pg_ctl(*cluster, "stop")
                    done["stopped"] = time.monotonic()
                    time.sleep(DOWN_SECONDS)
                    pg_ctl(*cluster, "start")
                    wait_ready()
                    done["started"] = time.monotonic()
                    return
                time.sleep(0.2)
        except Exception as exc:  # the test reports it
            done["error"] = exc
        finally:
            connections.close_all()  # this thread's connection, dead since the stop: never left open

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, done


def test_the_platform_recovers_from_a_postgresql_restart_mid_round_without_staff_action(
    local_cluster, live_platform, tmp_path
):
    cluster = local_cluster
    watcher, done = restart_when_training(tmp_path, cluster)
    try:
        campaign = live_platform.run_campaign(
            "PostgreSQL restart",
            timeout=600,
            train_config={"local-steps": 2, "seq-len": 32, "batch-size": 2, "threads": 1},
            num_rounds=2,
            min_nodes=2,
            round_timeout=120,
        )
    finally:
        watcher.join(timeout=DOWN_SECONDS + 70)
        if "stopped" in done and "started" not in done:
            pg_ctl(*cluster, "start")  # never leave the cluster down, whatever failed
            wait_ready()
    assert "error" not in done, f"restarting PostgreSQL failed: {done.get('error')}"
    assert "started" in done, "no ClientApp was ever seen training, so PostgreSQL was never restarted"
    assert 2 not in done["rounds_before"], "the campaign was over before the restart"
    connections.close_all()  # this thread's connection died with the restart (run_campaign reconnected it already)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.COMPLETED, campaign.status_reason

    # Recovered by itself: the run went on (one attempt, one Flower run), every round once.
    assert_completed_in_one_run(campaign, last_round=2, participants=2)

    live_platform.stack.stop()
    assert_no_process_left(tmp_path)
