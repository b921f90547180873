"""`join` starts its SuperNode again and again over a session: each start must be able to succeed."""

from __future__ import annotations

import socket
from pathlib import Path

from federation.cli.join import supernode_commands


def port_of(command: list[str]) -> int:
    return int(command[command.index("--port") + 1])


def test_every_start_picks_a_port_free_at_that_moment(tmp_path: Path):
    command = supernode_commands("127.0.0.1:9092", 0, {"data-path": "d"}, tmp_path / "ca.crt", tmp_path / "key")
    first = port_of(command())
    with socket.socket() as taken:  # another program took the port while the SuperNode was down
        taken.bind(("127.0.0.1", first))
        taken.listen()
        assert all(port_of(command()) != first for _ in range(5))


def test_a_port_the_user_gave_is_kept_across_starts(tmp_path: Path):
    command = supernode_commands("127.0.0.1:9092", 47001, {"data-path": "d"}, tmp_path / "ca.crt", tmp_path / "key")
    assert port_of(command()) == port_of(command()) == 47001
