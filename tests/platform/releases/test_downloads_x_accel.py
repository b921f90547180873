"""Behind the front proxy (DOWNLOADS_X_ACCEL) a download view sends no bytes: it names the stored file and the range it
chose, with every other header, status and count exactly as when it streams the file itself."""

from __future__ import annotations

import pytest

from releases.models import Release

pytestmark = pytest.mark.django_db

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture
def accel(settings):
    settings.DOWNLOADS_X_ACCEL = True


def _url(release: Release, revision: str | None = None) -> str:
    return f"/{release.repo_id}/resolve/{revision or release.revision}/{WEIGHTS}"


def _location(release: Release) -> str:
    sha = release.files.get(path=WEIGHTS).sha256
    return f"/releases/blobs/sha256/{sha[:2]}/{sha}"


def _streamed(client, url: str, **headers: str) -> dict[str, str]:
    response = client.get(url, headers=headers)
    b"".join(response.streaming_content)
    return dict(response.items())


def test_a_download_names_the_blob_and_keeps_every_other_header(client, release, accel, settings):
    response = client.get(_url(release))
    assert (response.status_code, response.content) == (200, b"")
    assert response["X-Accel-Redirect"] == _location(release) and "X-Accel-Range" not in response
    settings.DOWNLOADS_X_ACCEL = False
    streamed = _streamed(client, _url(release))
    # All but the length (the proxy sets it from the bytes it sends) are the same as when Django streams.
    accel_headers = {k: v for k, v in response.items() if not k.startswith("X-Accel") and k != "Content-Length"}
    assert accel_headers == {k: v for k, v in streamed.items() if k != "Content-Length"}
    release.refresh_from_db()
    assert release.download_count == 2


def test_a_range_is_decided_here_and_handed_on(client, release, accel):
    size = release.files.get(path=WEIGHTS).size
    response = client.get(_url(release), headers={"Range": "bytes=-5"})
    assert (response.status_code, response.content) == (206, b"")
    assert response["X-Accel-Range"] == f"bytes={size - 5}-{size - 1}"
    assert response["Content-Range"] == f"bytes {size - 5}-{size - 1}/{size}"
    release.refresh_from_db()
    assert release.download_count == 0  # resumed, not a new download


def test_head_304_and_416_name_no_file(client, release, accel):
    sha = release.files.get(path=WEIGHTS).sha256
    answers = [
        client.head(_url(release)),
        client.get(_url(release), headers={"If-None-Match": f'"{sha}"'}),
        client.get(_url(release), headers={"Range": "bytes=999999999-"}),
    ]
    assert [r.status_code for r in answers] == [200, 304, 416]
    assert not any("X-Accel-Redirect" in r for r in answers)


def test_a_file_outside_the_data_folder_is_streamed_by_django(client, release, accel, settings, tmp_path):
    settings.DATA_DIR = tmp_path / "elsewhere"  # the blob no longer lies under it
    response = client.get(_url(release))
    assert response.streaming and "X-Accel-Redirect" not in response
    assert len(b"".join(response.streaming_content)) == release.files.get(path=WEIGHTS).size
