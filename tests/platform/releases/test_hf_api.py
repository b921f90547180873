"""The Hub-compatible read API: repo info, tree, resolve with the headers and error codes clients act on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from releases.models import Release, ReleaseFile
from releases.services import release_yank

pytestmark = pytest.mark.django_db


def _resolve(release: Release, path: str, revision: str | None = None) -> str:
    return f"/{release.repo_id}/resolve/{revision or release.revision}/{path}"


def test_model_info_names_the_revision_and_every_file(client, release):
    for url in (f"/api/models/{release.repo_id}", f"/api/models/{release.repo_id}/revision/main",
                f"/api/models/{release.repo_id}/revision/{release.revision}"):  # fmt: skip
        info = client.get(url).json()
        assert info["id"] == release.repo_id and info["sha"] == release.revision
        assert {s["rfilename"] for s in info["siblings"]} == {
            "README.md", "adapter_config.json", "adapter_model.safetensors", "model.sig", "provenance.json"
        }  # fmt: skip
        assert info["cardData"]["base_model"] == "org/tiny" and info["library_name"] == "peft"


def test_tree_lists_files_with_size_and_oid(client, release):
    tree = client.get(f"/api/models/{release.repo_id}/tree/main", {"recursive": "true", "expand": "false"}).json()
    weights = next(e for e in tree if e["path"] == "adapter_model.safetensors")
    row = release.files.get(path="adapter_model.safetensors")
    assert weights == {"type": "file", "path": row.path, "size": row.size, "oid": row.sha256}


def test_resolve_head_and_get_carry_commit_etag_and_length(client, release):
    row = release.files.get(path="adapter_config.json")
    head = client.head(_resolve(release, row.path, "main"))
    assert head.status_code == 200 and head.content == b""
    assert head["X-Repo-Commit"] == release.revision
    assert head["ETag"] == f'"{row.sha256}"' and head["Content-Length"] == str(row.size)
    got = client.get(_resolve(release, row.path))
    body = b"".join(got.streaming_content)
    assert hashlib.sha256(body).hexdigest() == row.sha256 and got["Content-Length"] == str(row.size)


def test_missing_things_are_404_with_the_error_code_clients_expect(client, release):
    cases = {
        "/api/models/bayanihan/nothing-here": "RepoNotFound",
        f"/api/models/{release.repo_id}/revision/{'0' * 40}": "RevisionNotFound",
        f"/{release.repo_id}/resolve/{'0' * 40}/README.md": "RevisionNotFound",
        _resolve(release, "pytorch_model.bin"): "EntryNotFound",
        _resolve(release, "../../../secret_key"): "EntryNotFound",
        "/nobody/nothing/resolve/main/README.md": "RepoNotFound",
    }
    for url, code in cases.items():
        response = client.get(url)
        assert (response.status_code, response["X-Error-Code"]) == (404, code), url


def test_if_none_match_answers_304_and_range_answers_206(client, release):
    row = release.files.get(path="adapter_model.safetensors")
    url = _resolve(release, row.path)
    assert client.get(url, headers={"If-None-Match": f'"{row.sha256}"'}).status_code == 304
    data = (Path(release.path) / row.path).read_bytes()
    part = client.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part["Content-Range"] == f"bytes 10-19/{row.size}"
    assert b"".join(part.streaming_content) == data[10:20]
    tail = client.get(url, headers={"Range": "bytes=-5"})
    assert b"".join(tail.streaming_content) == data[-5:]
    resumed = client.get(url, headers={"Range": f"bytes={row.size - 100}-"})
    assert b"".join(resumed.streaming_content) == data[-100:]
    bad = client.get(url, headers={"Range": f"bytes={row.size + 10}-"})
    assert bad.status_code == 416 and bad["Content-Range"] == f"bytes */{row.size}"


def test_downloads_are_counted_per_file_and_per_release(client, release):
    weights = _resolve(release, "adapter_model.safetensors")
    client.get(_resolve(release, "adapter_config.json"))
    client.get(weights)
    client.head(weights)  # metadata, not a download
    client.get(weights, headers={"Range": "bytes=100-"})  # a resumed download is the same download
    client.get(f"/releases/{release.repo_id}/{release.revision}.zip")
    release.refresh_from_db()
    assert release.download_count == 2  # the weights once, the zip once
    counts = dict(ReleaseFile.objects.filter(release=release).values_list("path", "download_count"))
    assert counts["adapter_config.json"] == 1 and counts["adapter_model.safetensors"] == 1
    assert counts["README.md"] == 0


def _newer_revision(release: Release) -> Release:
    """A second revision of the same repo (same stored files), published after the first."""
    from campaigns.models import Campaign

    campaign = Campaign.objects.create(name="again", base_model=release.campaign.base_model, heldout_path="h")
    newer = Release.objects.create(
        campaign=campaign, repo_id=release.repo_id, revision="b" * 40, path=release.path,
        signature_sha256=release.signature_sha256, signature_size=release.signature_size,
    )  # fmt: skip
    for f in release.files.all():
        ReleaseFile.objects.create(release=newer, path=f.path, size=f.size, sha256=f.sha256)
    return newer


def test_main_is_the_latest_release_that_is_not_yanked(client, release, django_user_model):
    newer = _newer_revision(release)
    assert client.get(f"/api/models/{release.repo_id}").json()["sha"] == newer.revision
    assert client.head(_resolve(release, "README.md", "main"))["X-Repo-Commit"] == newer.revision
    release_yank(release=newer, by=None, reason="test")
    assert client.get(f"/api/models/{release.repo_id}").json()["sha"] == release.revision
    assert client.get(f"/api/models/{release.repo_id}/revision/{newer.revision}")["X-Error-Code"] == "RevisionNotFound"
    release_yank(release=release, by=None, reason="test")
    for url in (f"/api/models/{release.repo_id}", _resolve(release, "adapter_config.json"),
                f"/api/models/{release.repo_id}/tree/{release.revision}"):  # fmt: skip
        response = client.get(url)
        assert response.status_code == 404 and response["X-Error-Code"] == "RepoNotFound"
    # Staff still reach the yanked revision by its id, but `main` no longer points at it.
    client.force_login(django_user_model.objects.create_user("curator", is_staff=True))
    assert client.get(_resolve(release, "adapter_config.json")).status_code == 200
    assert client.get(f"/api/models/{release.repo_id}/revision/main")["X-Error-Code"] == "RevisionNotFound"


def test_hub_routes_do_not_shadow_the_site(client, release):
    assert client.get("/releases/").status_code == 200
    assert client.get("/admin/").status_code == 302  # the admin login, not a repo lookup
    assert client.get("/admin/x/resolve/main/README.md").status_code in {302, 404}
    assert "X-Error-Code" not in client.get("/admin/x/resolve/main/README.md")
