"""`join` keeps the node's warm worker running: started beside the SuperNode, restarted when it dies."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from federation import procs
from federation import warm_protocol as wire
from federation.cli.join import WARM_WORKER, keep_warm_worker, warm_worker_command


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
        first = supervisor.procs[WARM_WORKER]
        assert keep_warm_worker(supervisor, command, env, home) is None  # alive: left alone
        assert supervisor.procs[WARM_WORKER] is first

        first.send_signal(signal.SIGKILL)
        first.wait(30)
        line = keep_warm_worker(supervisor, command, env, home)
        assert line is not None and "warm worker exited with code -9; restarting it" in line
        second = supervisor.procs[WARM_WORKER]
        assert second.pid != first.pid
        wait_answering(wire.socket_path(home))  # the new worker took over the socket the dead one left
