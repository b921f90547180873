"""Stopping what a supervised process started, including helpers that left its process group."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from federation.procs import Supervisor, flower_env, free_port, supernode_command

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


# A supervising process: starts `cmd` under a Supervisor, writes the child's pid, then waits to be killed.
SUPERVISING = """
import json, sys, time
from pathlib import Path
from federation.procs import Supervisor
supervisor = Supervisor(Path(sys.argv[1]))
child = supervisor.start("child", json.loads(sys.argv[2]))
Path(sys.argv[3]).write_text(str(child.pid))
time.sleep(300)
"""


def _start_supervising(tmp_path: Path, cmd: list[str]) -> tuple[subprocess.Popen, psutil.Process]:
    pid_file = tmp_path / "child.pid"
    supervising = subprocess.Popen(
        [sys.executable, "-c", SUPERVISING, str(tmp_path / "logs"), json.dumps(cmd), str(pid_file)],
        env=flower_env(tmp_path / "flwr-home"),
    )
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert supervising.poll() is None, "the supervising process died"
        assert time.monotonic() < deadline, "the supervising process never started its child"
        time.sleep(0.05)
    return supervising, psutil.Process(int(pid_file.read_text()))


def _gone_within(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=seconds)
    for p in alive:  # clean up before failing
        p.kill()
    return alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_die_when_their_supervisor_is_killed(tmp_path: Path):
    supervising, child = _start_supervising(tmp_path, [sys.executable, "-c", "import time; time.sleep(300)"])
    assert child.is_running()

    supervising.kill()  # SIGKILL: no cleanup code runs in the supervisor
    supervising.wait()

    assert not _gone_within([child], 10), "the child outlived its killed supervisor"


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_supernode_and_what_it_started_die_when_join_like_supervisor_is_killed(tmp_path: Path):
    # A real SuperNode starts flower-superexec at once, before it reaches its SuperLink (closed port on purpose).
    cmd = supernode_command(f"127.0.0.1:{free_port()}", free_port(), {"data-path": str(tmp_path)})
    supervising, supernode = _start_supervising(tmp_path, cmd)
    deadline = time.monotonic() + 60
    while not (descendants := supernode.children(recursive=True)):
        assert time.monotonic() < deadline, "the SuperNode never started flower-superexec"
        time.sleep(0.2)
    assert any("flower-superexec" in " ".join(p.cmdline()) for p in descendants)

    started = time.monotonic()
    supervising.kill()
    supervising.wait()

    left = _gone_within([supernode, *descendants], 15)
    assert not left, f"left behind: {[' '.join(p.cmdline()) for p in left]}"
    print(f"SuperNode and its children gone {time.monotonic() - started:.1f}s after the supervisor's SIGKILL")


def test_flower_processes_poll_for_tasks_faster_than_flowers_default_and_flower_accepts_the_values(monkeypatch):
    from flwr.supercore.superexec.run_superexec import _get_task_poll_interval

    from federation import procs

    monkeypatch.delenv(procs.TASK_POLL_ENV, raising=False)
    node = flower_env(Path("/tmp/h"))
    link = flower_env(Path("/tmp/h"), task_poll_seconds=procs.SUPERLINK_TASK_POLL_SECONDS)
    for env, expected in ((node, procs.SUPERNODE_TASK_POLL_SECONDS), (link, procs.SUPERLINK_TASK_POLL_SECONDS)):
        monkeypatch.setenv(procs.TASK_POLL_ENV, env[procs.TASK_POLL_ENV])
        assert _get_task_poll_interval() == expected < 1.0  # Flower's default is 1 s


def test_an_operators_task_poll_interval_wins(monkeypatch):
    from federation import procs

    monkeypatch.setenv(procs.TASK_POLL_ENV, "2.5")
    assert flower_env(Path("/tmp/h"))[procs.TASK_POLL_ENV] == "2.5"
