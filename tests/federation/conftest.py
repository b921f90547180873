"""A real, tiny HTTP server that answers with server errors a few times before it answers properly."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class FlakyServer:
    """Answers the first `failures` requests with `status`, then `ok(method, path, body)` -> (status, bytes)."""

    failures: int = 3
    status: int = 500
    ok: Callable[[str, str, bytes], tuple[int, bytes]] = lambda method, path, body: (200, b"{}")
    seen: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status answered)
    headers: dict[str, str] = field(default_factory=dict)  # extra headers on a proper answer (set by `ok`)
    url: str = ""


@pytest.fixture
def flaky_server() -> Iterator[FlakyServer]:
    state = FlakyServer()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                failing = state.failures > 0
                state.failures -= 1 if failing else 0
            status, payload = (
                (state.status, b"database is locked") if failing else state.ok(self.command, self.path, body)
            )
            state.seen.append((self.command, self.path, status))
            self.send_response(status)
            for key, value in ({} if failing else state.headers).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
