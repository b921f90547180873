"""Who the SuperLink admits: enrolled keys only; a revoked node is refused and told why; join resumes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from community.models import Node
from community.services import enrollment_token_create, node_suspend
from federation import pki, procs
from stack.local_nodes import local_contributor
from stack.runner import Stack

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_unregistered_key_is_refused(tls_superlink, tmp_path, settings, tiny_corpus):
    key, _ = pki.ensure_node_key(tmp_path / "stranger")  # never enrolled
    command = procs.supernode_command(
        tls_superlink, procs.free_port(), {"data-path": str(tiny_corpus / "node-1")}, settings.SUPERLINK_ROOT_CERT, key
    )
    with procs.Supervisor(tmp_path / "logs") as supervisor:
        proc = supervisor.start("stranger", command, env=procs.flower_env(tmp_path / "h"))
        wait_for(lambda: proc.poll() is not None, 90, "the SuperNode to give up")
        assert proc.returncode != 0
        assert "Failed to activate SuperNode" in supervisor.tail("stranger", 40)


def test_join_resumes_without_a_token_and_a_revoked_node_is_refused_with_the_reason(
    live_server, tls_superlink, tmp_path, tiny_corpus, tiny_checkpoint
):
    token, _ = enrollment_token_create(contributor=local_contributor("ana"))
    stack = Stack(tmp_path / "stack")
    try:
        home = stack.start_join("ana-laptop", live_server.url, token, tiny_corpus / "node-1", tiny_checkpoint)
        node = wait_for(
            lambda: Node.objects.filter(name="ana-laptop", last_seen__isnull=False).first(), 90, "a heartbeat"
        )
        assert (home / "node_key").stat().st_mode & 0o777 == 0o600
        assert (home / "node.json").stat().st_mode & 0o777 == 0o600
        stack.stop()

        # Second run: same home, no token — it resumes as the same node.
        seen = node.last_seen
        stack.supervisor.start(
            "again",
            [sys.executable, "-m", "federation", "join", "--data", str(tiny_corpus / "node-1"), "--home", str(home),
             "--model", str(tiny_checkpoint), "--interval", "1"],
            env=procs.flower_env(home / "flwr-home"),
        )  # fmt: skip
        wait_for(lambda: Node.objects.get(pk=node.pk).last_seen > seen, 90, "a heartbeat after resuming")
        assert Node.objects.count() == 1

        node_suspend(node=node, reason="left the project")
        wait_for(lambda: stack.supervisor.returncode("again") is not None, 60, "join to stop after revocation")
        assert stack.supervisor.returncode("again") == 3
        assert "no longer admitted: left the project" in stack.supervisor.tail("again")
    finally:
        stack.stop()


def test_join_with_bad_data_sends_nothing(tmp_path, live_server):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"messages": [{"role": "user", "content": "hi"}]}\n')
    result = subprocess.run(
        [sys.executable, "-m", "federation", "join", "--site", live_server.url, "--token", "bye_x", "--data", str(bad),
         "--home", str(tmp_path / "home")],
        capture_output=True, text=True, timeout=120, env=procs.flower_env(tmp_path / "h"),
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{bad}:2:" in result.stderr and "assistant" in result.stderr
    assert not (tmp_path / "home" / "node_key").exists()
