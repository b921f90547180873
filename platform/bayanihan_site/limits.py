"""The outermost ASGI layer: refuse a request by its size, its missing credential or a control character in its
path before Django reads a byte of its body.

Why here and not in a Django middleware or view: Django's ASGI handler reads (spools) the whole request body before
any middleware or view runs, so a 200 MB anonymous PUT was written to disk in full and only then refused with 401/403.
This layer answers from the request line and headers alone; a body without a Content-Length (chunked) is counted as
it arrives and cut off at the route's cap. A reverse proxy in front should enforce the same caps (docs/security.md);
this layer is what holds when the site is reached directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Control characters (CR, LF, NUL, ...) never belong in a URL path: refusing them here means no view, header or
# database query ever sees one (PostgreSQL refuses NUL in a string with an exception; a CR echoed into a header made
# Django answer 500 and uvicorn drop the connection).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Route:
    """A body-carrying API route: how many bytes it may send, and whether it must name a credential to send any."""

    pattern: re.Pattern[str]
    methods: frozenset[str]
    cap_setting: str  # settings name holding the cap in bytes, read per request so tests and deployments can set it
    credential: bool  # an Authorization header is required before the body is accepted


ROUTES = (
    Route(re.compile(r"/api/v1/nodes/enroll"), frozenset({"POST"}), "MAX_ENROLL_BODY_BYTES", credential=False),
    Route(re.compile(r"/api/v1/nodes/heartbeat"), frozenset({"POST"}), "MAX_HEARTBEAT_BODY_BYTES", credential=True),
    Route(re.compile(r"/api/v1/campaigns/\d+/events"), frozenset({"POST"}), "DATA_UPLOAD_MAX_MEMORY_SIZE", True),
    Route(
        re.compile(r"/api/v1/campaigns/\d+/rounds/\d+/files/[^/]+"),
        frozenset({"PUT"}),
        "MAX_ADAPTER_UPLOAD_BYTES",
        credential=True,
    ),
)
DEFAULT_CAPS = {"MAX_ENROLL_BODY_BYTES": 64 * 1024, "MAX_HEARTBEAT_BODY_BYTES": 16 * 1024}


def _setting(name: str, default: int) -> int:
    from django.conf import settings

    return int(getattr(settings, name, default))


def rule_for(path: str, method: str) -> tuple[int, bool]:
    """(largest body accepted in bytes, whether a credential header is required) for one request."""
    for route in ROUTES:
        if route.pattern.fullmatch(path):
            if method not in route.methods:
                break  # the view answers 405; a body to it is held to the default cap
            return _setting(route.cap_setting, DEFAULT_CAPS.get(route.cap_setting, 0)), route.credential
    return _setting("MAX_REQUEST_BODY_BYTES", 4 * 1024 * 1024), False


async def _answer(send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the unread body stays unread: this connection is not reused
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if _CONTROL.search(path):
            await _answer(send, 400, "the request path contains a control character")
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        cap, credential = rule_for(path, method)
        if credential and not headers.get(b"authorization"):
            await _answer(send, 401, "this route needs a credential (Authorization header)")
            return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _answer(send, 400, "Content-Length is not a number")
                return
            if declared > cap:
                await _answer(send, 413, f"request body over {cap} bytes for this route")
                return

        state = {"received": 0, "over": False, "started": False}

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > cap:
                    # Django's handler treats a disconnect as an aborted request and answers nothing; we answer.
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, counted_receive, tracked_send)
        if state["over"] and not state["started"]:
            await _answer(send, 413, f"request body over {cap} bytes for this route")
