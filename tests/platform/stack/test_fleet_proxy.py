"""From the network only the SuperLink's Fleet API and /health are reachable: Control and Runtime stay on loopback."""

from __future__ import annotations

import socket
import ssl

import psutil
import pytest
import requests
from django.conf import settings as django_settings

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def raw_post(address: str, path: str) -> tuple[int, bytes]:
    """POST `path` byte for byte (HTTP clients would normalise dot segments and case first) over TLS."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=django_settings.SUPERLINK_ROOT_CERT)
    with (
        socket.create_connection((host, int(port)), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        tls.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/protobuf\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


BLOCKED = [
    "/v1/control/list-runs",
    "/v1/control/list-nodes",
    "/v1/control/register-node",
    "/v1/control/start-run",
    "/v1/runtime/acquire-task",
    "/v1/runtime/pull-task-input",
    "/V1/CONTROL/list-runs",
    "//v1/control/list-runs",
    "/v1/fleet/../control/list-runs",
    "/v1/fleet/%2e%2e/control/list-runs",
    "/v1/fleet/..%2fcontrol/list-runs",
    "/health/../v1/control/list-runs",
    "/v1/fleetx/../control/list-runs",
    "/docs",
    "/openapi.json",
]


def test_control_and_runtime_are_unreachable_through_the_public_address(tls_superlink, settings):
    # The same request straight to the SuperLink on loopback is answered: the refusals below are the proxy's doing.
    assert raw_post(settings.SUPERLINK_ADDRESS, "/v1/control/list-runs")[0] == 200
    answers = {path: raw_post(tls_superlink, path)[0] for path in BLOCKED}
    assert answers == dict.fromkeys(BLOCKED, 404)


def test_health_and_the_fleet_api_go_through(tls_superlink, settings):
    response = requests.get(f"https://{tls_superlink}/health", verify=settings.SUPERLINK_ROOT_CERT, timeout=10)
    assert response.status_code == 200
    # A fleet call reaches the SuperLink (its own answer to an empty body, not the proxy's 404).
    status, body = raw_post(tls_superlink, "/v1/fleet/activate-node")
    assert body != b"not found\n", status


def listening(tmp_path, program: str) -> set[tuple[str, int]]:
    """Addresses the test's own `program` process (found by its command line naming tmp_path) listens on."""
    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if program in cmdline and str(tmp_path) in cmdline:
            found |= {
                (c.laddr.ip, c.laddr.port) for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN
            }
    return found


def test_the_superlink_listens_on_loopback_and_the_proxy_on_the_public_port_only(tls_superlink, settings, tmp_path):
    port = int(settings.SUPERLINK_ADDRESS.rsplit(":", 1)[1])
    assert listening(tmp_path, "flower-superlink") == {("127.0.0.1", port)}
    # Only the node port: no admin endpoint (Caddy's default is :2019), nothing else.
    host, public_port = tls_superlink.rsplit(":", 1)
    assert listening(tmp_path, "caddy") == {(host, int(public_port))}
    assert '"disabled": true' in (tmp_path / "stack" / "proxy" / "caddy.json").read_text()
