"""The fault-injection tooling itself (tests/platform/faults.py): the proxy forwards, injects and stops; processes are
found by role and directory, killed, and reported when left behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from faults import (
    Fault,
    FaultProxy,
    Outage,
    assert_no_process_left,
    find_one,
    find_processes,
    kill9,
    kill_leftovers,
    role_of,
    round_numbers_problems,
)

from federation import pki


class Upstream:
    """A real HTTP(S) server on loopback that echoes what it got and remembers every request."""

    def __init__(self, tls: dict[str, Path] | None = None) -> None:
        self.seen: list[dict] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _echo(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen = {"method": self.command, "path": self.path, "body": body.decode(), "x": self.headers["X-Test"]}
                upstream.seen.append(seen)
                status = 404 if self.path.startswith("/missing") else 200
                data = json.dumps(seen).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Upstream", "yes")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _echo

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls["cert"]), str(tls["key"]))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def test_proxy_forwards_method_path_body_headers_and_status(upstream):
    with FaultProxy(upstream.url) as proxy:
        response = requests.post(f"{proxy.url}/v1/fleet/pull?x=1", data=b"payload", headers={"X-Test": "t"}, timeout=5)
        assert response.status_code == 200
        assert response.headers["X-Upstream"] == "yes"
        assert response.json() == {"method": "POST", "path": "/v1/fleet/pull?x=1", "body": "payload", "x": "t"}
        missing = requests.get(f"{proxy.url}/missing", timeout=5)
        assert missing.status_code == 404  # the target's own errors pass through unchanged
    assert proxy.forwarded() == 2 and proxy.injected() == 0


def test_proxy_answers_500_to_matching_paths_the_given_number_of_times_then_forwards(upstream):
    with FaultProxy(upstream.url, faults=[Fault(r"/v1/fleet/pull-messages$", times=2)]) as proxy:
        statuses = [requests.post(f"{proxy.url}/v1/fleet/pull-messages", timeout=5).status_code for _ in range(3)]
        other = requests.post(f"{proxy.url}/v1/fleet/push-messages", timeout=5).status_code
    assert statuses == [500, 500, 200]
    assert other == 200
    # The injected ones never reached the target: the SuperLink did not see them.
    assert [s["path"] for s in upstream.seen] == ["/v1/fleet/pull-messages", "/v1/fleet/push-messages"]
    assert proxy.injected("pull-messages") == 2 and proxy.forwarded() == 2


def test_a_forwarding_fault_does_the_work_but_loses_the_answer(upstream):
    with FaultProxy(upstream.url) as proxy:
        proxy.add(Fault("/report", times=1, status=500, forward=True, method="POST"))
        assert requests.get(f"{proxy.url}/report", timeout=5).status_code == 200  # other method: untouched
        assert requests.post(f"{proxy.url}/report", data=b"r1", timeout=5).status_code == 500
        assert requests.post(f"{proxy.url}/report", data=b"r1", timeout=5).status_code == 200
    assert [(s["method"], s["body"]) for s in upstream.seen] == [("GET", ""), ("POST", "r1"), ("POST", "r1")]


def test_an_outage_forwards_its_trigger_then_drops_every_connection_for_its_duration(upstream):
    with FaultProxy(upstream.url) as proxy:
        outage = proxy.add_outage(Outage("/events", seconds=1.5, skip=1, method="POST"))
        assert requests.post(f"{proxy.url}/events", data=b"e1", timeout=5).status_code == 200  # skipped
        with pytest.raises(requests.ConnectionError):
            requests.post(f"{proxy.url}/events", data=b"e2", timeout=5)  # done by the target, answer lost
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{proxy.url}/files/a", timeout=5)  # any path while it lasts: never reaches the target
        time.sleep(1.6)
        assert requests.post(f"{proxy.url}/events", data=b"e2", timeout=5).status_code == 200  # back; once only
        assert requests.post(f"{proxy.url}/events", data=b"e3", timeout=5).status_code == 200
    assert [(s["method"], s["path"], s["body"]) for s in upstream.seen] == [
        ("POST", "/events", "e1"),
        ("POST", "/events", "e2"),
        ("POST", "/events", "e2"),
        ("POST", "/events", "e3"),
    ]
    assert outage.dropped == 2 and proxy.injected() == 2


def test_proxy_says_502_when_the_target_is_down():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nobody listens once the socket closes
    with FaultProxy(f"http://127.0.0.1:{closed}") as proxy:
        assert requests.get(f"{proxy.url}/health", timeout=5).status_code == 502


def test_proxy_stops_and_cuts_kept_alive_connections(upstream):
    proxy = FaultProxy(upstream.url).start()
    session = requests.Session()
    assert session.get(f"{proxy.url}/health", timeout=5).status_code == 200  # a kept-alive connection is open
    proxy.stop()
    assert not proxy.running
    with pytest.raises(requests.ConnectionError):
        session.get(f"{proxy.url}/health", timeout=5)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{proxy.url}/health", timeout=5)


def test_proxy_stops_by_itself_when_its_lifetime_is_over(upstream):
    proxy = FaultProxy(upstream.url, lifetime=0.5).start()
    assert requests.get(f"{proxy.url}/health", timeout=5).status_code == 200
    assert proxy.wait_stopped(10)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{proxy.url}/health", timeout=5)


def test_proxy_serves_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("http://127.0.0.1:1", host="0.0.0.0")


def test_proxy_speaks_tls_on_both_sides_with_the_platforms_certificates(tmp_path):
    tls = pki.ensure_superlink_tls(tmp_path / "tls", ["127.0.0.1"])
    target = Upstream(tls)
    try:
        faults = [Fault("/v1/fleet/heartbeat", times=1)]
        with FaultProxy(target.url, faults, certfile=tls["cert"], keyfile=tls["key"], target_ca=tls["ca"]) as proxy:
            assert proxy.url.startswith("https://")
            verify = str(tls["ca"])
            assert requests.post(f"{proxy.url}/v1/fleet/heartbeat", timeout=5, verify=verify).status_code == 500
            assert requests.post(f"{proxy.url}/v1/fleet/heartbeat", timeout=5, verify=verify).status_code == 200
    finally:
        target.close()


# --- processes ---------------------------------------------------------------------------------------------------


def test_roles_are_read_from_command_lines_as_the_platform_starts_them():
    py, venv = sys.executable, "/venv/bin"
    assert role_of([py, f"{venv}/flower-superlink", "--database", ":flwr-in-memory:"]) == "superlink"
    assert role_of([py, f"{venv}/flower-supernode", "--superlink", "127.0.0.1:1"]) == "supernode"
    assert role_of([py, f"{venv}/flwr-serverapp", "--insecure"]) == "serverapp"
    assert role_of([py, f"{venv}/flwr-clientapp", "--token", "x"]) == "clientapp"
    assert role_of([py, "-m", "federation.node_runtime"]) == "clientapp"
    assert role_of([py, "-S", "-m", "federation.task_launcher", "--token", "x", "--insecure"]) == "clientapp"
    assert role_of([py, "-m", "federation.task_launcher", "serve", "/n/launch.sock", "--parent-pid", "7"]) == "launcher"
    assert role_of([py, "-m", "federation.warm_worker", "--home", "/n", "--data", "/d"]) == "warm-worker"
    assert role_of([py, "-m", "celery", "-A", "bayanihan_site", "worker", "--pool=solo"]) == "worker"
    assert role_of([py, "-m", "uvicorn", "bayanihan_site.asgi:application"]) == "web"
    assert role_of([f"{venv}/caddy", "run", "--config", "Caddyfile"]) == "caddy"
    assert role_of([py, "-m", "federation", "join", "--site", "http://x"]) == "join"
    assert role_of([py, "manage.py", "demo", "--tiny"]) == "demo"
    assert role_of([py, "-m", "pytest", "tests/federation"]) is None
    assert role_of(["bash", "-c", "flower-superlink is mentioned, not run"]) is None


def _fake(bin_dir: Path, name: str) -> Path:
    """A stand-in program with the real one's name: command lines read as the real one's (python + script)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / name
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")
    script.chmod(0o755)
    return script


def _start(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, start_new_session=True)


def _wait_listed(under: Path, role: str, count: int, **kw) -> list:
    deadline = time.monotonic() + 10
    while len(found := find_processes(under, role, **kw)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_processes_are_found_by_role_node_and_directory_then_killed(tmp_path):
    bin_dir = tmp_path / "bin"
    run, elsewhere = tmp_path / "run", tmp_path / "someone-else"
    node1 = _start([str(_fake(bin_dir, "flower-supernode"))], run / "stack" / "nodes" / "node-1")
    node2 = _start([str(_fake(bin_dir, "flower-supernode"))], run / "stack" / "nodes" / "node-2")
    other = _start([str(_fake(bin_dir, "flower-superlink"))], elsewhere)
    # The web and worker run from the code's folder: their BAYANIHAN_VAR ties them to their platform.
    celery = _fake(bin_dir, "celery")
    worker = _start([str(celery), "worker"], tmp_path / "code", {"BAYANIHAN_VAR": str(run)})
    procs = [node1, node2, other, worker]
    try:
        assert {p.pid for p in _wait_listed(run, "supernode", 2)} == {node1.pid, node2.pid}
        assert find_one(run, "supernode", node="node-1").pid == node1.pid
        assert find_processes(run, "superlink") == []  # another platform's SuperLink is not ours
        assert [p.pid for p in _wait_listed(elsewhere, "superlink", 1)] == [other.pid]
        assert [p.pid for p in find_processes(run, "worker")] == [worker.pid]

        killed = kill9(run, "supernode", node="node-1")
        assert killed.pid == node1.pid and node1.wait(10) == -9
        assert [p.pid for p in find_processes(run, "supernode")] == [node2.pid]

        with pytest.raises(AssertionError, match=r"2 process\(es\) left behind(.|\n)*supernode(.|\n)*worker"):
            assert_no_process_left(run, grace=0.5)  # and it ends them, so one failure stays one
        assert node2.wait(10) == -9 and worker.wait(10) == -9
        assert_no_process_left(run, grace=0.5)
        assert other.poll() is None  # never touched: not under `run`
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_kill_leftovers_reports_what_it_ended(tmp_path):
    proc = _start([str(_fake(tmp_path / "bin", "flwr-clientapp"))], tmp_path / "home")
    try:
        _wait_listed(tmp_path, "clientapp", 1)
        assert [p.role for p in kill_leftovers(tmp_path)] == ["clientapp"]
        assert proc.wait(10) == -9
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_round_numbers_problems_name_gaps_duplicates_and_a_missing_last_round():
    assert round_numbers_problems([0, 1, 2], expected_last=2) == []
    assert round_numbers_problems([0, 2], expected_last=2) == ["missing [1]"]
    assert round_numbers_problems([0, 1, 1, 2]) == ["duplicated [1]"]
    assert round_numbers_problems([0, 1], expected_last=2) == ["last is 1, expected 2"]
    assert round_numbers_problems([1, 2]) == ["starts at 1"]
