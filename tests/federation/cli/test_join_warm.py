"""`join` keeps the node's warm worker running: started beside the SuperNode, restarted when it dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from federation import procs
from federation import warm_protocol as wire
from federation.cli.join import WARM_WORKER, JoinError, keep_warm_worker, shared_worker_socket, warm_worker_command


def answers(path: Path) -> bool:
    address, fd = wire.short_address(path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(address)
            return True
    except OSError:
        return False
    finally:
        if fd is not None:
            os.close(fd)


def wait_answering(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not answers(path):
        assert time.monotonic() < deadline, f"nothing answered on {path}"
        time.sleep(0.2)


def test_join_restarts_a_warm_worker_that_died(tmp_path: Path, tiny_corpus: Path):
    home = tmp_path / "node"
    home.mkdir(mode=0o700)
    command = warm_worker_command(home, str(tiny_corpus / "node-1"))
    env = procs.flower_env(home / "flwr-home")
    with procs.Supervisor(home / "logs") as supervisor:
        assert keep_warm_worker(supervisor, command, env, home) is None  # first start: nothing to report
        wait_answering(wire.socket_path(home))
        first = supervisor.pid(WARM_WORKER)
        assert keep_warm_worker(supervisor, command, env, home) is None  # alive: left alone
        assert supervisor.pid(WARM_WORKER) == first

        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while supervisor.returncode(WARM_WORKER) is None:  # exited, not yet stopped: keep_warm_worker's case
            assert time.monotonic() < deadline, "the warm worker did not die"
            time.sleep(0.1)
        line = keep_warm_worker(supervisor, command, env, home)
        assert line is not None and "warm worker exited with code -9; restarting it" in line
        assert supervisor.pid(WARM_WORKER) not in (None, first)
        wait_answering(wire.socket_path(home))  # the new worker took over the socket the dead one left


def test_a_shared_worker_socket_must_sit_in_a_private_folder_of_ours(tmp_path: Path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    with pytest.raises(JoinError, match=r"must be yours and private \(chmod 700\), it is mode 755"):
        shared_worker_socket(str(shared / "warm.sock"))
    shared.chmod(0o700)
    assert shared_worker_socket(str(shared / "warm.sock")) == shared / "warm.sock"  # a worker may start later
    (shared / "warm.sock").write_text("not a socket")
    with pytest.raises(JoinError, match="that is not a socket"):
        shared_worker_socket(str(shared / "warm.sock"))
    with pytest.raises(JoinError, match="cannot be read"):
        shared_worker_socket(str(tmp_path / "missing" / "warm.sock"))


def test_join_refuses_a_bad_shared_worker_before_anything_is_sent(tmp_path: Path, tiny_corpus: Path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    home = tmp_path / "node"
    for extra, says in (([], "must be yours and private"), (["--no-warm"], "contradict each other")):
        result = subprocess.run(
            [sys.executable, "-m", "federation", "join", "--site", "http://127.0.0.1:9", "--token", "t",
             "--data", str(tiny_corpus / "node-1"), "--home", str(home), "--warm-worker", str(shared / "warm.sock"),
             *extra],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert says in result.stderr
        assert not home.exists()  # no key made, no enrollment tried
