"""Serving one stored file: streamed (never read whole), with ETag / If-None-Match, single Range and HEAD.

Behind the site's front proxy (settings.DOWNLOADS_X_ACCEL, what `make serve` runs) the body is not sent from here: the
answer names the file and the byte range decided here (bayanihan_site/accel.py) and Caddy sends those bytes with
sendfile. Every decision (access, 304, 416, which range, the headers, whether it counts as a download) is still made
here, the same way for both paths.
"""

from __future__ import annotations

import asyncio
import mimetypes
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, HttpResponseNotModified, StreamingHttpResponse

from bayanihan_site.accel import ACCEL_RANGE, ACCEL_REDIRECT, accel_location
from federation.artifacts import CONTENT_SHA256_HEADER

CHUNK = 1 << 20
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _etag_matches(header: str, etag: str) -> bool:
    # Weak comparison (RFC 9110 13.1.2): W/"x" matches "x"; "*" matches anything.
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) for one satisfiable byte range; None means serve the whole file.

    Raises ValueError when the range cannot be satisfied (416)."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:  # several ranges or another unit: the whole file is a valid answer
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        length = int(last)
        if length == 0:
            raise ValueError("empty suffix range")
        return max(size - length, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise ValueError("range outside the file")
    return start, end


def _slice(path: Path, start: int, length: int) -> Iterator[bytes]:
    with path.open("rb") as fh:
        fh.seek(start)
        while length > 0:
            chunk = fh.read(min(CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


async def _in_threads(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    _end = object()
    try:
        while (chunk := await asyncio.to_thread(next, chunks, _end)) is not _end:
            yield chunk  # type: ignore[misc]
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # the client went away: release the file now, not at garbage collection


def stream(request: HttpRequest, chunks: Iterator[bytes]) -> Iterator[bytes] | AsyncIterator[bytes]:
    """What to give StreamingHttpResponse so that the body is really streamed by the server in front.

    Under ASGI (uvicorn, what `make serve` runs) Django reads a *synchronous* iterator to the end, into memory, on
    its one shared sync thread before sending a byte: 200 concurrent 3.7 MB downloads then queued behind each other
    and grew the web process by 785 MB (bench/downloads.py). An async iterator that reads each chunk in a worker
    thread streams at once with one chunk in memory per download. Under WSGI the plain iterator is right.
    """
    return _in_threads(chunks) if isinstance(request, ASGIRequest) else chunks


def serve_file(
    request: HttpRequest,
    path: Path,
    *,
    size: int,
    sha256: str,
    filename: str,
    headers: dict[str, str] | None = None,
    attachment: bool = False,
    immutable: bool = False,
) -> tuple[HttpResponse, bool]:
    """The response for GET/HEAD of a stored file, and whether it counts as a download.

    `immutable`: the URL named the full revision, so its bytes can never change and caches may keep them for a year.
    Under a moving name (`main`) the same file is served with `no-cache`: caches revalidate every time (a cheap 304 by
    ETag), so a yank or a new release reaches every client at once instead of a year later."""
    etag = f'"{sha256}"'
    common = {
        "ETag": etag,
        "X-Linked-Etag": etag,  # huggingface_hub prefers this one (its LFS convention)
        "X-Linked-Size": str(size),
        CONTENT_SHA256_HEADER: sha256,
        "Accept-Ranges": "bytes",
        "Cache-Control": "public, max-age=31536000, immutable" if immutable else "public, no-cache",
        **(headers or {}),
    }
    inm = request.headers.get("If-None-Match")
    if inm and _etag_matches(inm, etag):
        response: HttpResponse = HttpResponseNotModified()
        for key, value in common.items():
            response[key] = value
        return response, False

    byte_range = None
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if range_header and (not if_range or if_range.strip() == etag):
        try:
            byte_range = parse_range(range_header, size)
        except ValueError:
            response = HttpResponse(status=416)
            response["Content-Range"] = f"bytes */{size}"
            return response, False

    start, end = byte_range if byte_range else (0, size - 1)
    length = end - start + 1 if size else 0
    location = accel_location(path) if request.method == "GET" else None
    if request.method == "HEAD":
        response = HttpResponse(status=206 if byte_range else 200, content_type="application/octet-stream")
    elif location is not None:
        # No body and no Content-Length here: the proxy sends exactly these bytes and sets Content-Length and
        # Content-Range itself from X-Accel-Range; it drops the X-Accel-* headers.
        response = HttpResponse(status=206 if byte_range else 200)
        response[ACCEL_REDIRECT] = location
        if byte_range:
            response[ACCEL_RANGE] = f"bytes={start}-{end}"
    else:
        response = StreamingHttpResponse(
            stream(request, _slice(path, start, length)), status=206 if byte_range else 200
        )
    if request.method != "HEAD":
        guessed = None if byte_range else mimetypes.guess_type(filename)[0]
        response["Content-Type"] = guessed or "application/octet-stream"
    if byte_range:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    if location is None:
        response["Content-Length"] = str(length)
    disposition = "attachment" if attachment else "inline"
    response["Content-Disposition"] = f'{disposition}; filename="{Path(filename).name}"'
    for key, value in common.items():
        response[key] = value
    # A resumed download (range not from 0) or a HEAD is not a new download.
    return response, request.method == "GET" and start == 0
