"""The task launcher, with real processes: Flower's per-message `flwr-clientapp` is a stdlib-only client whose task
runs in a fork of the launcher with the client's argv, env, cwd and stdio; exit codes and signals pass through; a
killed client stops its task; no launcher means the task runs as before, in its own process."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation import procs, task_launcher, warm_protocol

# What the launcher's children run in these tests, instead of node_runtime.main (which needs Flower's runtime API).
TARGET = """
import os, signal, sys, time
from pathlib import Path

def main(argv):
    if argv[0] == "--sleep":
        def stopped(signum, frame):
            Path(argv[1]).write_text(str(signum))
            sys.exit(7)
        signal.signal(signal.SIGTERM, stopped)
    print("TASK", os.getpid(), os.getppid(), " ".join(argv), os.environ.get("MARK"), os.getcwd(), flush=True)
    print("TASK-ERR", file=sys.stderr, flush=True)
    if argv[0] == "--sleep":
        time.sleep(120)
    return int(argv[1])
"""

SERVE = """
import sys
from pathlib import Path
from federation import task_launcher
from federation.task_launcher import Launcher
task_launcher.REQUEST_TIMEOUT = 2.0
launcher = Launcher(Path(sys.argv[1]), target=sys.argv[2])
launcher.prepare()
launcher.bind()
launcher.serve_forever()
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "node"
    path.mkdir(mode=0o700)
    (tmp_path / "launcher_target.py").write_text(TARGET)
    return path


@pytest.fixture
def launcher(folder: Path) -> Iterator[subprocess.Popen]:
    env = procs.flower_env(folder / "flwr-home", {"PYTHONPATH": f"{procs.REPO_ROOT}:{folder.parent}"})
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(folder / task_launcher.SOCKET_NAME),
                             "launcher_target:main"], env=env)  # fmt: skip
    deadline = time.monotonic() + 60
    while not (folder / task_launcher.STATUS_FILE).exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the launcher did not start"
        time.sleep(0.05)
    yield proc
    proc.terminate()
    proc.wait(10)


def client(folder: Path, *args: str, cwd: Path | None = None, **extra: str) -> subprocess.Popen:
    """Our flwr-clientapp as a SuperNode starts it: the node bin's wrapper, python -S."""
    bin_dir = procs.node_runtime_bin(folder.parent / "bin-home")
    env = procs.flower_env(folder / "flwr-home", {warm_protocol.ENV_SOCKET: str(folder / "warm.sock")} | extra)
    return subprocess.Popen([str(bin_dir / "flwr-clientapp"), *args], env=env, cwd=cwd or folder.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def status(folder: Path) -> dict:
    return json.loads((folder / task_launcher.STATUS_FILE).read_text())


def test_a_task_runs_in_a_fork_with_the_clients_argv_env_cwd_and_stdio_and_its_exit_code(folder, launcher, tmp_path):
    proc = client(folder, "--exit", "5", MARK="from-the-client", cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err
    word, pid, parent, argv, mark, cwd = out.split()[:3] + [" ".join(out.split()[3:5])] + out.split()[5:7]
    assert word == "TASK" and int(parent) == launcher.pid and int(pid) != proc.pid
    assert (argv, mark, cwd) == ("--exit 5", "from-the-client", str(tmp_path))
    assert "TASK-ERR" in err
    assert status(folder)["tasks"]["launched"] == 1
    assert stat.S_IMODE((folder / task_launcher.SOCKET_NAME).stat().st_mode) == 0o600


def test_sigterm_to_the_client_reaches_its_task_and_a_killed_client_stops_its_task(folder, launcher, tmp_path):
    mark = tmp_path / "stopped"
    proc = client(folder, "--sleep", str(mark))
    assert proc.stdout is not None and proc.stdout.readline().startswith("TASK")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 7  # the task's own exit code, after its SIGTERM handler ran
    assert mark.read_text() == str(int(signal.SIGTERM))

    mark.unlink()
    proc = client(folder, "--sleep", str(mark))
    assert proc.stdout is not None and proc.stdout.readline().startswith("TASK")
    proc.kill()  # as if Flower's SuperExec or the OOM killer took the process it started
    proc.wait(10)
    deadline = time.monotonic() + 30
    while not mark.exists():
        assert time.monotonic() < deadline, "the task of a killed client kept running"
        time.sleep(0.1)
    assert status(folder)["tasks"]["clients_gone"] == 1


def test_without_a_launcher_the_task_runs_as_before_in_its_own_process(folder):
    # No launcher socket (the worker is restarting, or runs none): the client execs node_runtime itself.
    proc = client(folder, "--help")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Run the installed Bayanihan ClientApp" in out and "--runtime-api-address" in out
    # No warm worker at all, or the launcher turned off: the same.
    for extra in ({warm_protocol.ENV_SOCKET: ""}, {task_launcher.ENV_LAUNCHER: "0"}):
        proc = client(folder, "--help", **extra)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "Run the installed Bayanihan ClientApp" in out


def test_a_request_that_is_not_ours_is_answered_with_a_fallback_and_the_launcher_keeps_serving(folder, launcher):
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(folder / task_launcher.SOCKET_NAME))
        socket.send_fds(sock, [b"F"], [0, 1, 2])
        task_launcher._send(sock, {"protocol": 99, "argv": [], "env": {}, "cwd": "/"})
        answer = task_launcher._recv(sock)
    assert answer["fallback"].startswith("bad request: protocol 99")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(folder / task_launcher.SOCKET_NAME))
        socket.send_fds(sock, [b"F"], [0, 1, 2])
        task_launcher._send(sock, {"protocol": task_launcher.PROTOCOL, "argv": [1], "env": {}, "cwd": "/"})
        assert task_launcher._recv(sock) == {"fallback": "bad request: argv is not a list of strings"}
    proc = client(folder, "--exit", "0")
    assert proc.wait(60) == 0
    assert status(folder)["tasks"] == {"launched": 1, "fallback": 2, "signals": 0, "clients_gone": 0}


def test_a_client_that_connects_and_says_nothing_holds_up_no_other_and_is_dropped(folder, launcher):
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(str(folder / task_launcher.SOCKET_NAME))
        started = time.monotonic()
        proc = client(folder, "--exit", "3")  # served while the silent one is still connected
        assert proc.wait(60) == 3
        assert time.monotonic() - started < 2.0 or status(folder)["tasks"]["launched"] == 1
        silent.settimeout(30)
        assert task_launcher._recv(silent) == {"fallback": "no request within 2s"}
    assert status(folder)["tasks"] == {"launched": 1, "fallback": 1, "signals": 0, "clients_gone": 0}


def test_a_launcher_leaves_a_socket_another_launcher_bound_since(folder):
    first = task_launcher.Launcher(folder / task_launcher.SOCKET_NAME)
    first.bind()
    second = task_launcher.Launcher(folder / task_launcher.SOCKET_NAME)
    second.bind()  # a restarted launcher takes the path over
    first.unlink()  # the old one's exit must not remove it
    assert (folder / task_launcher.SOCKET_NAME).exists()
    second.unlink()
    assert not (folder / task_launcher.SOCKET_NAME).exists()
    first.listener.close()
    second.listener.close()


def test_the_launcher_refuses_a_folder_others_can_enter(tmp_path):
    folder = tmp_path / "open"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    with pytest.raises(SystemExit, match="must be private"):
        task_launcher.Launcher(folder / task_launcher.SOCKET_NAME).bind()


def test_the_per_message_client_imports_only_the_standard_library(folder):
    code = ("import sys; import federation.task_launcher; "
            "print(' '.join(sorted(m for m in sys.modules)))")  # fmt: skip
    env = {"PYTHONPATH": str(procs.REPO_ROOT), "PATH": os.environ["PATH"]}
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    modules = result.stdout.split()
    third_party = [m for m in modules if m.split(".")[0] in {"flwr", "torch", "psutil", "grpc", "google", "numpy"}]
    assert third_party == []
    assert task_launcher.ENV_WARM_SOCKET == warm_protocol.ENV_SOCKET  # the client names it without importing it
