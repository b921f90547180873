"""Hardening of the release routes: caching by revision, odd bytes in paths and revisions, and path traversal on
every file route (held; regression)."""

from __future__ import annotations

import pytest

from releases.models import Release

pytestmark = pytest.mark.django_db


def test_a_file_under_main_is_revalidated_and_one_under_its_revision_is_immutable(client, release):
    for main_url, pinned_url in [
        (f"/{release.repo_id}/resolve/main/README.md", f"/{release.repo_id}/resolve/{release.revision}/README.md"),
        (f"/releases/{release.repo_id}/main/README.md", f"/releases/{release.repo_id}/{release.revision}/README.md"),
    ]:
        moving = client.get(main_url)
        assert moving.status_code == 200 and "immutable" not in moving["Cache-Control"], main_url
        assert "no-cache" in moving["Cache-Control"] and moving["X-Repo-Commit"] == release.revision
        pinned = client.get(pinned_url)
        assert pinned.status_code == 200 and "immutable" in pinned["Cache-Control"], pinned_url


def test_a_304_under_main_is_not_immutable_either(client, release):
    row = release.files.get(path="README.md")
    response = client.get(f"/{release.repo_id}/resolve/main/README.md", headers={"If-None-Match": f'"{row.sha256}"'})
    assert response.status_code == 304 and "immutable" not in response["Cache-Control"]


@pytest.mark.parametrize("odd", ["%0D", "%0A", "%00", "%0D%0AX-Injected:%201", "%7F"])
def test_a_control_character_in_a_revision_or_path_is_a_clean_404(client, release, odd):
    urls = [
        f"/{release.repo_id}/resolve/ma{odd}in/README.md",
        f"/{release.repo_id}/resolve/main/READ{odd}ME.md",
        f"/api/models/{release.repo_id}/revision/ma{odd}in",
        f"/api/models/{release.repo_id}/tree/ma{odd}in",
        f"/api/models/{release.repo_id}/tree/main/a{odd}b",
        f"/releases/{release.repo_id}/ma{odd}in/",
        f"/releases/{release.repo_id}/main/READ{odd}ME.md",
        f"/releases/{release.repo_id}/ma{odd}in.zip",
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 404, url
        for value in response.headers.values():
            assert "\r" not in value and "\n" not in value and "\x00" not in value, (url, value)
            assert "Injected" not in value


def test_an_error_header_never_echoes_the_request(client, release):
    response = client.get(f"/{release.repo_id}/resolve/{'f' * 40}/README.md")
    assert response["X-Error-Code"] == "RevisionNotFound" and "f" * 40 not in response["X-Error-Message"]


TRAVERSALS = [
    "../secret_key",
    "../../secret_key",
    "../../../var/secret_key",
    "..%2Fsecret_key",
    "..%252Fsecret_key",
    "%2e%2e/secret_key",
    "%2e%2e%2fsecret_key",
    "..\\secret_key",
    "..%5csecret_key",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "//etc/passwd",
    "./README.md/../../secret_key",
    "README.md/..",
    "README.md%00.txt",
    "....//secret_key",
    "..;/secret_key",
    "%c0%ae%c0%ae/secret_key",
    "..%c0%afsecret_key",
    "~/.ssh/id_rsa",
    "file:///etc/passwd",
    "blobs/sha256/ab/" + "ab" * 32,
    ".staging/1/README.md",
    "model.sig/../provenance.json",
    "README.md/",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_is_404_on_every_file_route(client, release: Release, path):
    assert len(TRAVERSALS) == 25
    for url in (
        f"/{release.repo_id}/resolve/main/{path}",
        f"/{release.repo_id}/resolve/{release.revision}/{path}",
        f"/releases/{release.repo_id}/{release.revision}/{path}",
        f"/api/models/{release.repo_id}/tree/main/{path}",
    ):
        response = client.get(url)
        assert response.status_code == 404, url
        assert b"SECRET" not in response.content and b"root:" not in response.content


def test_a_published_release_names_its_repo_and_its_revision_can_be_recomputed(release, settings):
    """What `verify URL` binds to: the repo id inside the signed provenance, the revision from the files."""
    import json
    from pathlib import Path

    from federation.verify import verify_folder
    from releases.signing import public_key_path

    folder = Path(release.path)
    assert json.loads((folder / "provenance.json").read_text())["repo_id"] == release.repo_id
    result = verify_folder(folder, public_key_path(), repo_id=release.repo_id, revision=release.revision)
    assert (result.repo_id, result.revision) == (release.repo_id, release.revision)


def test_the_card_and_the_terms_say_data_fingerprints_are_public(client, release):
    """13.16: fingerprints are published unsalted; contributors and readers are told what that allows."""
    from pathlib import Path

    card = (Path(release.path) / "README.md").read_text()
    assert "fingerprints in `provenance.json` are public and unsalted" in card
    terms = client.get("/signup/").content.decode()
    assert "fingerprint of your data" in terms and "confirm that it was used" in terms


def test_a_contributor_page_does_not_list_yanked_releases(client, release, django_user_model):
    """13.16: /me/ listed yanked repos, which are hidden from everyone but staff everywhere else."""
    from community.models import Contributor, Node
    from releases.services import release_yank

    user = django_user_model.objects.create_user("ana", "a@x.org", "a-long-pass-phrase-42")
    ana = Contributor.objects.create(user=user, display_name="ana", status="approved")
    Node.objects.filter(flwr_node_id="0").update(contributor=ana)
    client.force_login(user)
    assert release.repo_id in client.get("/me/").content.decode()
    release_yank(release=release, by=None, reason="withdrawn")
    assert release.repo_id not in client.get("/me/").content.decode()
