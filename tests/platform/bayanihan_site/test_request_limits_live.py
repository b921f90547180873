"""The same limits through a real uvicorn (what `make serve` runs): a 200 MB anonymous upload is answered at once,
without the body being sent, and a CR in a path is a clean 400, not a dropped connection."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation import procs

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def web(tmp_path) -> Iterator[int]:
    port = procs.free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(BAYANIHAN_VAR=str(tmp_path / "var"), PYTHONPATH=f"{REPO / 'platform'}{os.pathsep}{REPO}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bayanihan_site.asgi:application", "--host", "127.0.0.1", "--port",
         str(port), "--no-access-log"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _exchange(port: int, head: str, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1") + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_an_anonymous_200_mb_upload_is_answered_before_the_body_is_sent(web):
    started = time.monotonic()
    answer = _exchange(
        web,
        "PUT /api/v1/campaigns/1/rounds/1/files/adapter_model.safetensors HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Length: {200 * 1024 * 1024}\r\n\r\n",
        b"x" * 4096,
    )
    assert answer.startswith(b"HTTP/1.1 401") and time.monotonic() - started < 5


def test_a_carriage_return_in_a_revision_is_a_clean_400(web):
    answer = _exchange(
        web, "GET /bayanihan/x-1/resolve/ma%0D%0AX-Evil:%201in/README.md HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400") and b"X-Evil" not in answer.split(b"\r\n\r\n")[0]
