"""The outer ASGI layer refuses bodies by size and missing credential before Django reads them, and
control characters in a path with a clean 400. Driven through the real ASGI application, no server."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync

from bayanihan_site.asgi import application

MB = 1024 * 1024


@async_to_sync
async def _call(method: str, path: str, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, dict, bytes, int]:
    """(status, headers, body, how many body chunks the application pulled)."""
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        if pending:
            pulled += 1
            return pending.pop(0)
        await asyncio.Event().wait()  # the client stays connected; Django cancels this wait when it has answered
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("latin-1"),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in {"host": "127.0.0.1", **headers}.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    await application(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body, pulled


FILE_URL = "/api/v1/campaigns/1/rounds/1/files/adapter_model.safetensors"


def test_an_anonymous_200_mb_upload_is_refused_before_a_byte_is_read():
    status, _, body, pulled = _call("PUT", FILE_URL, {"content-length": str(200 * MB)}, [b"x" * 1024])
    assert (status, pulled) == (401, 0)
    assert "credential" in json.loads(body)["error"]


def test_an_anonymous_heartbeat_body_is_refused_before_it_is_read():
    status, _, _, pulled = _call("POST", "/api/v1/nodes/heartbeat", {"content-length": str(200 * MB)}, [b"{}"])
    assert (status, pulled) == (401, 0)


@pytest.mark.parametrize(
    ("method", "path", "size"),
    [
        ("PUT", FILE_URL, 300 * MB),  # over MAX_ADAPTER_UPLOAD_BYTES (256 MB)
        ("POST", "/api/v1/campaigns/1/events", 3 * MB),
        ("POST", "/api/v1/nodes/heartbeat", MB),
        ("POST", "/api/v1/nodes/enroll", MB),
        ("POST", "/login/", 50 * MB),  # any other route: MAX_REQUEST_BODY_BYTES
    ],
)
def test_a_declared_body_over_the_routes_cap_is_refused_unread(method, path, size):
    status, headers, _, pulled = _call(method, path, {"content-length": str(size), "authorization": "Bearer x"}, [b""])
    assert (status, pulled) == (413, 0)
    assert headers["connection"] == "close"


def test_a_chunked_body_is_cut_off_at_the_cap(settings):
    settings.MAX_HEARTBEAT_BODY_BYTES = 1000
    chunks = [b"x" * 600] * 50  # 30 kB, no Content-Length
    status, _, _, pulled = _call("POST", "/api/v1/nodes/heartbeat", {"authorization": "Bearer x"}, chunks)
    assert status == 413 and pulled == 2  # stopped at the chunk that crossed 1000 bytes


def test_a_bad_content_length_is_a_400():
    status, _, _, pulled = _call("POST", "/api/v1/nodes/enroll", {"content-length": "lots"}, [b"{}"])
    assert (status, pulled) == (400, 0)


@pytest.mark.django_db(transaction=True)
def test_a_small_request_still_reaches_the_site():
    status, _, body, _ = _call("POST", "/api/v1/nodes/enroll", {"content-length": "2"}, [b"{}"])
    assert status == 400 and b"PEM" in body  # the view answered: the body has no key


@pytest.mark.parametrize("char", ["\r", "\n", "\x00", "\x7f"])
@pytest.mark.parametrize(
    "template",
    ["/bayanihan/x-1/resolve/ma{c}in/README.md", "/api/models/bayanihan/x-1/revision/ma{c}in", "/releases/a/b/{c}/"],
)
def test_a_control_character_in_the_path_is_a_clean_400(template, char):
    status, headers, body, _ = _call("GET", template.format(c=char), {}, [b""])
    assert status == 400 and "control character" in json.loads(body)["error"]
    assert all("\r" not in v and "\n" not in v for v in headers.values())
