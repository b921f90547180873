"""Under ASGI (uvicorn, what `make serve` runs) downloads must stream, not be read whole into the web process."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

pytestmark = pytest.mark.django_db(transaction=True)


async def _body(response) -> bytes:
    assert response.is_async, "a sync iterator under ASGI is buffered whole by Django before the first byte"
    return b"".join([chunk async for chunk in response.streaming_content])


@async_to_sync
async def _get(url: str, **headers: str) -> tuple[int, dict, bytes]:
    response = await AsyncClient().get(url, headers=headers)
    return response.status_code, dict(response.items()), await _body(response)


def test_resolve_streams_asynchronously_under_asgi(release):
    row = release.files.get(path="adapter_model.safetensors")
    status, headers, body = _get(f"/{release.repo_id}/resolve/main/{row.path}")
    assert status == 200 and headers["Content-Length"] == str(row.size)
    assert hashlib.sha256(body).hexdigest() == row.sha256


def test_range_request_streams_asynchronously_under_asgi(release):
    row = release.files.get(path="adapter_model.safetensors")
    status, headers, body = _get(f"/{release.repo_id}/resolve/main/{row.path}", Range="bytes=5-9")  # _body: async
    stored = (Path(release.path) / row.path).read_bytes()
    assert status == 206 and body == stored[5:10]  # exactly those bytes, not the first five or the whole file
    assert headers["Content-Range"] == f"bytes 5-9/{row.size}" and headers["Content-Length"] == "5"


def test_zip_streams_asynchronously_under_asgi(release):
    status, _, body = _get(f"/releases/{release.repo_id}/{release.revision}.zip")
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert status == 200 and any(name.endswith("adapter_model.safetensors") for name in archive.namelist())
