"""`make serve` for real: several web workers behind the front proxy, the worker, the SuperLink and its proxy; a
SIGTERM or a Ctrl-C (SIGINT) stops every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests

from federation import procs
from tests.platform.faults import assert_no_process_left

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def _wait_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"serve did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_runs_several_web_workers_behind_the_proxy_and_stops_everything(tmp_path, stop_signal):
    var = tmp_path / "var"
    port = procs.free_port()
    env = {
        **os.environ,
        "BAYANIHAN_VAR": str(var),
        "DATABASE_URL": f"sqlite:///{var / 'bayanihan.sqlite3'}",
        "PORT": str(port),
        "SUPERLINK_ADDRESS": f"127.0.0.1:{procs.free_port()}",
        "SUPERLINK_PUBLIC_ADDRESS": f"127.0.0.1:{procs.free_port()}",
        "CELERY_QUEUE": f"test-serve-{uuid.uuid4().hex[:8]}",
        "WEB_WORKERS": "3",
    }
    env.pop("SITE_URL", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "serve"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_up(f"http://127.0.0.1:{port}/releases/", proc, log)
        tree = psutil.Process(proc.pid).children(recursive=True)
        programs = [" ".join(p.cmdline()) for p in tree]
        proxies = [c for c in programs if "caddy run" in c]
        assert len(proxies) == 2, programs  # the site's front proxy and the SuperLink's
        web = next(p for p in tree if "uvicorn" in " ".join(p.cmdline()) and "--uds" in p.cmdline())
        workers = [p for p in web.children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 3, programs  # WEB_WORKERS
        assert any("celery" in c and "worker" in c for c in programs) and any("flower-superlink" in c for c in programs)
        # They share one cache (the login limits count across workers) and hand files to the proxy.
        assert web.environ().get("CACHE_REDIS_URL") and web.environ().get("DOWNLOADS_X_ACCEL") == "1"
        # The workers are behind the proxy only: nothing of theirs listens on a TCP port.
        for worker in [web, *workers]:
            assert not [c for c in worker.net_connections("inet") if c.status == psutil.CONN_LISTEN]
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
        left = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, [" ".join(p.cmdline()) for p in left]
        assert_no_process_left(var)
        assert "Stopping" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
