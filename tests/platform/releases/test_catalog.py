"""The public catalog: a list with key metrics, a release page (card, files, provenance, usage), zip, key."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from federation.verify import verify_folder
from releases.services import release_yank

pytestmark = pytest.mark.django_db


def test_catalog_lists_releases_with_key_metrics(client, release):
    page = client.get("/releases/").content.decode()
    assert release.repo_id in page and "org/tiny" in page
    assert "3.0000 → 2.2000" in page
    assert f"/releases/{release.repo_id}/{release.revision}/" in page


def test_release_page_shows_card_files_provenance_and_usage(client, release):
    page = client.get(f"/releases/{release.repo_id}/").content.decode()
    assert f"<h1>{release.repo_id}</h1>" in page and "<h2>Aggregation</h2>" in page  # the rendered card
    assert "<table><thead><tr><th>round</th>" in page
    for f in release.files.all():
        assert f.sha256 in page and f.path in page
    assert release.signature_sha256 in page  # model.sig is listed too
    for pseudonym in release.campaign.rounds.get(number=1).participations.values_list("node__pseudonym", flat=True):
        assert pseudonym in page  # the provenance timeline
    assert "export HF_ENDPOINT=http://testserver" in page
    assert f'snapshot_download("{release.repo_id}", revision="{release.revision}")' in page
    assert "python -m federation verify http://testserver/releases/" in page
    assert page.count(release.key_fingerprint) >= 1


def test_yanked_releases_are_hidden_from_the_public_but_not_from_staff(client, release, django_user_model):
    release_yank(release=release, by=None, reason="bad round")
    assert release.repo_id not in client.get("/releases/").content.decode()
    for url in (f"/releases/{release.repo_id}/", f"/releases/{release.repo_id}/{release.revision}/",
                f"/releases/{release.repo_id}/{release.revision}/README.md",
                f"/releases/{release.repo_id}/{release.revision}.zip"):  # fmt: skip
        assert client.get(url).status_code == 404, url
    client.force_login(django_user_model.objects.create_user("curator", is_staff=True))
    assert "yanked" in client.get("/releases/").content.decode()
    page = client.get(f"/releases/{release.repo_id}/{release.revision}/").content.decode()
    assert "Yanked" in page and "bad round" in page


def test_zip_holds_the_whole_signed_release(client, release, tmp_path):
    from releases.signing import public_key_path

    response = client.get(f"/releases/{release.repo_id}/{release.revision}.zip")
    assert response.status_code == 200 and response.streaming
    with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as archive:
        archive.extractall(tmp_path / "unzipped")
    (folder,) = (tmp_path / "unzipped").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in Path(release.path).iterdir())
    assert verify_folder(folder, public_key_path()).base_model == "org/tiny"


def test_browser_downloads_are_attachments_looked_up_by_row(client, release):
    url = f"/releases/{release.repo_id}/{release.revision}"
    response = client.get(f"{url}/adapter_config.json")
    assert response.status_code == 200 and "attachment" in response["Content-Disposition"]
    assert client.get(f"{url}/model.sig").status_code == 200
    assert client.get(f"{url}/..%2F..%2Fsecret_key").status_code == 404


def test_public_key_is_served_at_a_stable_url(client, release):
    from releases.signing import public_key_path

    response = client.get("/releases/signing-key.pub")
    assert response.status_code == 200 and response.content == public_key_path().read_bytes()
    assert response["X-Key-Fingerprint"] == release.key_fingerprint


def test_card_markdown_is_rendered_safely():
    from releases.markdown_render import render_markdown, split_front_matter

    meta, body = split_front_matter("---\nlicense: mit\ntags:\n- a\n- b\n---\n# Title\n")
    assert meta == {"license": "mit", "tags": "a, b"} and body == "# Title\n"
    html = render_markdown(
        "# T <script>\n\nSome **bold** and `x<y>`.\n\n| a | b |\n|---|---|\n| 1 | <i>2</i> |\n\n"
        "```python\nprint('<b>')\n```\n- item <img src=x onerror=alert(1)>\n"
    )
    assert "<script>" not in html and "<img" not in html and "<i>" not in html
    assert "<h1>T &lt;script&gt;</h1>" in html and "<strong>bold</strong>" in html and "<code>x&lt;y&gt;</code>" in html
    assert "<td>&lt;i&gt;2&lt;/i&gt;</td>" in html
    assert '<pre><code class="language-python">print(&#x27;&lt;b&gt;&#x27;)</code></pre>' in html
    assert "<li>item &lt;img" in html


def test_staff_yank_a_release_from_the_admin(client, release, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("admin", password="x"))
    response = client.post(
        "/admin/releases/release/", {"action": "yank", "_selected_action": [release.pk]}, follow=True
    )
    assert response.status_code == 200
    release.refresh_from_db()
    assert release.is_yanked and release.yanked_by.username == "admin"
    assert client.get(f"/admin/releases/release/{release.pk}/change/").status_code == 200  # view-only form
