"""Downloads through what `make serve` runs: Caddy in front, uvicorn workers behind it, the bytes sent by Caddy
(X-Accel-Redirect) with the same status, headers, ranges, access checks and download counts as Django's own path."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from django.conf import settings as django_settings

from federation import procs
from releases.models import Release
from releases.services import release_yank
from tests.platform.conftest import database_url

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WEIGHTS = "adapter_model.safetensors"
# Headers the download views set; each must reach the client through the proxy exactly as Django sets it.
KEPT = [
    "ETag", "X-Linked-Etag", "X-Linked-Size", "X-Content-SHA256", "Accept-Ranges", "Cache-Control", "X-Repo-Commit",
    "Content-Disposition", "Content-Type", "Content-Length", "Content-Range",
]  # fmt: skip


@dataclass
class Front:
    url: str
    web_socket: Path  # the workers' own socket, behind the proxy


@pytest.fixture
def front(release, tmp_path) -> Iterator[Front]:
    """The site behind its front proxy, two workers, sharing this test's database and DATA_DIR."""
    from stack.runner import Stack, platform_env

    assert Path(django_settings.DATA_DIR) == tmp_path / "data"  # the release fixture put its files there
    port = procs.free_port()
    env = platform_env(
        DATABASE_URL=database_url(), BAYANIHAN_VAR=str(tmp_path), SECRET_KEY=django_settings.SECRET_KEY,
        SIGNING_KEY=str(django_settings.SIGNING_KEY), LOG_LEVEL="WARNING",
    )  # fmt: skip
    stack = Stack(tmp_path / "stack")
    try:
        stack.start_web(port, env, workers=2)
        assert stack.web_socket is not None
        yield Front(f"http://127.0.0.1:{port}", stack.web_socket)
    finally:
        stack.stop()


def _url(release: Release, path: str = WEIGHTS, revision: str | None = None) -> str:
    return f"/{release.repo_id}/resolve/{revision or release.revision}/{path}"


def _counts(release: Release) -> tuple[int, int]:
    release.refresh_from_db()
    return release.download_count, release.files.get(path=WEIGHTS).download_count


def _django_headers(client, url: str, **headers: str) -> dict[str, str]:
    """What Django alone (no proxy, the streaming path) answers to the same request."""
    response = client.get(url, headers=headers)
    if response.streaming:
        b"".join(response.streaming_content)
    return {k: response[k] for k in KEPT if response.has_header(k)}


def test_a_download_through_the_proxy_has_djangos_headers_the_right_bytes_and_counts_once(front, release, client):
    blob = release.files.get(path=WEIGHTS)
    for view_url in (_url(release), f"/releases/{release.repo_id}/{release.revision}/{WEIGHTS}"):
        before = _counts(release)
        got = requests.get(front.url + view_url, timeout=30)
        assert got.status_code == 200, got.text[:300]
        assert hashlib.sha256(got.content).hexdigest() == blob.sha256 and len(got.content) == blob.size
        assert _counts(release) == (before[0] + 1, before[1] + 1)  # once, by Django; Caddy counts nothing
        assert not any(k.lower().startswith("x-accel") for k in got.headers)
        # The workers sent no byte of the file: Caddy did, from the file they named.
        status, head, body = _raw_get(front.web_socket, view_url, {})
        assert (status, body) == (200, b"") and b"x-accel-redirect: /releases/blobs/sha256/" in head.lower()
        expected = _django_headers(client, view_url)
        assert {k: got.headers[k] for k in KEPT if k in got.headers} == expected


def test_ranges_are_served_exactly_as_django_decides(front, release, client):
    blob = release.files.get(path=WEIGHTS)
    data = requests.get(front.url + _url(release), timeout=30).content
    size = blob.size
    cases = {
        "bytes=10-19": (206, data[10:20], f"bytes 10-19/{size}"),
        "bytes=-5": (206, data[-5:], f"bytes {size - 5}-{size - 1}/{size}"),
        f"bytes={size - 100}-": (206, data[-100:], f"bytes {size - 100}-{size - 1}/{size}"),
        f"bytes=5-{size + 1000}": (206, data[5:], f"bytes 5-{size - 1}/{size}"),
        "bytes=0-0,5-9": (200, data, None),  # several ranges: Django sends the whole file, so does the proxy
        "items=0-9": (200, data, None),
        f"bytes={size + 10}-": (416, b"", f"bytes */{size}"),
    }
    for header, (status, body, content_range) in cases.items():
        before = _counts(release)
        got = requests.get(front.url + _url(release), headers={"Range": header}, timeout=30)
        # A range from byte 0 is a new download; a resumed one (or a refused one) is not.
        starts_at_zero = status == 200 or header == "bytes=0-0,5-9"
        assert _counts(release)[1] - before[1] == (1 if starts_at_zero else 0), header
        assert (got.status_code, got.content, got.headers.get("Content-Range")) == (status, body, content_range), header
        if status != 416:
            assert got.headers["Content-Length"] == str(len(body)), header
            assert {k: got.headers[k] for k in KEPT if k in got.headers} == _django_headers(
                client, _url(release), Range=header
            ), header
    # If-Range with another ETag: the range is ignored and the whole file sent, as Django decides.
    stale = requests.get(front.url + _url(release), headers={"Range": "bytes=0-9", "If-Range": '"other"'}, timeout=30)
    assert (stale.status_code, stale.content) == (200, data)


def test_an_etag_match_answers_304_without_a_body_or_a_count(front, release):
    blob = release.files.get(path=WEIGHTS)
    before = _counts(release)
    for inm in (f'"{blob.sha256}"', f'W/"{blob.sha256}"', f'"x", "{blob.sha256}"', "*"):
        got = requests.get(front.url + _url(release, revision="main"), headers={"If-None-Match": inm}, timeout=30)
        assert (got.status_code, got.content, got.headers["ETag"]) == (304, b"", f'"{blob.sha256}"'), inm
        assert got.headers["X-Content-SHA256"] == blob.sha256
    assert _counts(release) == before
    # Another ETag: the whole file (the file_server never sees the client's If-None-Match, Django decided).
    got = requests.get(front.url + _url(release), headers={"If-None-Match": '"stale"'}, timeout=30)
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == blob.sha256


def test_head_sends_the_headers_and_counts_nothing(front, release):
    blob = release.files.get(path=WEIGHTS)
    before = _counts(release)
    got = requests.head(front.url + _url(release), timeout=30)
    assert (got.status_code, got.content, got.headers["Content-Length"]) == (200, b"", str(blob.size))
    assert got.headers["ETag"] == f'"{blob.sha256}"'
    assert _counts(release) == before


def test_a_yanked_release_is_refused_to_the_public_and_served_to_staff(front, release, client, django_user_model):
    release_yank(release=release, by=None, reason="bad round")
    before = _counts(release)
    refused = requests.get(front.url + _url(release), timeout=30)
    assert refused.status_code == 404 and refused.headers["X-Error-Code"] == "RepoNotFound"
    assert len(refused.content) < 1000 and _counts(release) == before
    client.force_login(django_user_model.objects.create_user("curator", is_staff=True))
    cookies = {django_settings.SESSION_COOKIE_NAME: client.cookies[django_settings.SESSION_COOKIE_NAME].value}
    got = requests.get(front.url + _url(release), cookies=cookies, timeout=30)
    assert got.status_code == 200
    assert hashlib.sha256(got.content).hexdigest() == release.files.get(path=WEIGHTS).sha256


def _raw_get(base: str | Path, path: str, headers: dict[str, str]) -> tuple[int, bytes, bytes]:
    """GET byte for byte (no client normalisation) from a URL's host:port or a Unix socket: status, head, body."""
    if isinstance(base, Path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(base))
        host = "127.0.0.1"
    else:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=10)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def test_a_client_cannot_make_the_proxy_send_a_file_by_sending_x_accel_headers(front, release, tmp_path):
    blob = release.files.get(path=WEIGHTS)
    weights = Path(django_settings.DATA_DIR) / "releases" / "blobs" / "sha256" / blob.sha256[:2] / blob.sha256
    head = weights.read_bytes()[:256]
    # Files the proxy's file_server could reach (inside its root) and one just outside it.
    canaries = {"/canary.txt": tmp_path / "data" / "canary.txt", "/../canary.txt": tmp_path / "canary.txt"}
    for location, path in canaries.items():
        path.write_text(f"canary {location}")
    locations = [f"/releases/blobs/sha256/{blob.sha256[:2]}/{blob.sha256}", *canaries, "/%2e%2e/canary.txt"]
    for location in locations:
        for path in ("/releases/", "/nothing-here", "/api/models/bayanihan/nothing-here", "/canary.txt", location):
            status, _, body = _raw_get(front.url, path, {"X-Accel-Redirect": location, "X-Accel-Range": "bytes=0-9"})
            assert b"canary" not in body and head not in body, (path, location)
            assert status in (200, 404), (path, location, status)
    # A download asked with the client's own X-Accel-Range still gets the bytes Django chose (all of them).
    got = requests.get(front.url + _url(release), headers={"X-Accel-Range": "bytes=0-9"}, timeout=30)
    assert got.status_code == 200 and len(got.content) == blob.size
