"""Stopping what a supervised process started, including helpers that left its process group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from federation.procs import (
    Supervisor,
    flower_env,
    free_port,
    interrupt_on_signals,
    restore_signals,
    supernode_command,
)

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


# Ignores SIGTERM, as a child stuck in shutdown would: only the SIGKILL after the grace period ends it.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(99)"
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def test_pid_returncode_and_restart_with_the_same_command_env_and_log(tmp_path: Path):
    with Supervisor(tmp_path / "logs") as supervisor:
        assert supervisor.pid("echo") is None and supervisor.returncode("echo") is None
        script = "import os, sys, time; print(os.environ['WHO'], flush=True); time.sleep(120)"
        supervisor.start("echo", [sys.executable, "-c", script], env={**os.environ, "WHO": "first"}, cwd=tmp_path)
        first = supervisor.pid("echo")
        assert first and supervisor.running("echo") and supervisor.names() == ["echo"]
        deadline = time.monotonic() + 30
        while supervisor.tail("echo") != "first":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(first, signal.SIGKILL)
        while supervisor.returncode("echo") is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert supervisor.returncode("echo") == -signal.SIGKILL and supervisor.pid("echo") == first

        supervisor.restart("echo")
        assert supervisor.pid("echo") not in (None, first) and supervisor.running("echo")
        deadline = time.monotonic() + 30
        while supervisor.tail("echo").splitlines() != ["first", "first"]:  # same env, same log, appended
            assert time.monotonic() < deadline, supervisor.tail("echo")
            time.sleep(0.05)
        supervisor.stop("echo")
        assert supervisor.pid("echo") is None and supervisor.names() == []
        supervisor.restart("echo")  # still known after a stop
        assert supervisor.running("echo")
        with pytest.raises(KeyError):
            supervisor.restart("never")
    assert supervisor.names() == []


def test_stop_many_stops_together_within_one_grace_period(tmp_path: Path):
    supervisor = Supervisor(tmp_path / "logs")
    for i in range(3):
        supervisor.start(f"node-{i}", [sys.executable, "-c", STUBBORN])
    supervisor.start("superlink", SLEEPER)
    pids = [supervisor.pid(f"node-{i}") for i in range(3)]
    deadline = time.monotonic() + 30
    while not all(supervisor.tail(f"node-{i}") == "up" for i in range(3)):  # their SIGTERM handlers are set
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    supervisor.stop_many(supervisor.names("node-"), timeout=1.5)
    assert time.monotonic() - started < 4  # one grace period for all three, then SIGKILL
    assert supervisor.names() == ["superlink"] and supervisor.running("superlink")
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
    supervisor.stop_all()


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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signals_unwind_like_ctrl_c_and_the_old_handlers_come_back(signum: int):
    before = signal.getsignal(signum)
    previous = interrupt_on_signals()
    try:
        with pytest.raises(KeyboardInterrupt, match=signal.Signals(signum).name):
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler runs at the next bytecode; never reached
    finally:
        restore_signals(previous)
    assert signal.getsignal(signum) == before
