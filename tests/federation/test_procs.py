"""Stopping what a supervised process started, including helpers that left its process group."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil

from federation.procs import Supervisor

# A parent that starts a child in a session of its own (as the SuperLink starts flower-superexec), then waits.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(120)
"""


def test_stop_also_ends_a_child_that_left_the_process_group(tmp_path: Path):
    pid_file = tmp_path / "child.pid"
    supervisor = Supervisor(tmp_path / "logs")
    parent = supervisor.start("parent", [sys.executable, "-c", PARENT, str(pid_file)])
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the parent never started its child"
        time.sleep(0.05)
    child = psutil.Process(int(pid_file.read_text()))
    assert child.is_running()

    supervisor.stop("parent", timeout=5)

    assert parent.poll() is not None
    child.wait(timeout=10)  # raises psutil.TimeoutExpired if it was left running
    assert not child.is_running()
