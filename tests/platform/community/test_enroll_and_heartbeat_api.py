"""Node enrollment against a real SuperLink (TLS + node auth), and the per-node heartbeat API."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from community.models import Contributor, Node
from community.services import contributor_set_status, contributor_signup, enrollment_token_create, node_suspend
from federation import pki

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


@pytest.fixture
def approved() -> Contributor:
    c = contributor_signup(username="ana", email="a@x.org", password="a-long-pass-phrase-42", accept_terms=True)
    return contributor_set_status(contributor=c, status=Contributor.Status.APPROVED)


def enroll(client, token: str, key_dir: Path, name: str = "laptop"):
    _, public_pem = pki.ensure_node_key(key_dir)
    return client.post(
        "/api/v1/nodes/enroll", {"token": token, "public_key": public_pem.decode(), "name": name},
        content_type="application/json",
    )  # fmt: skip


def test_enrollment_registers_the_key_and_returns_what_join_needs(client, approved, tls_superlink, tmp_path, settings):
    token, _ = enrollment_token_create(contributor=approved)
    response = enroll(client, token, tmp_path / "k")
    assert response.status_code == 201, response.content
    body = response.json()
    node = Node.objects.get(contributor=approved)
    assert body["node_id"] == node.flwr_node_id and body["superlink"] == tls_superlink
    assert body["ca_certificate"] == Path(settings.SUPERLINK_ROOT_CERT).read_text()
    assert body["api_token"] not in node.api_token_hash  # stored hashed


def test_used_token_is_refused(client, approved, tls_superlink, tmp_path):
    token, _ = enrollment_token_create(contributor=approved)
    assert enroll(client, token, tmp_path / "a").status_code == 201
    assert enroll(client, token, tmp_path / "b").status_code == 403


def test_expired_token_is_refused(client, approved, tls_superlink, tmp_path):
    token, record = enrollment_token_create(contributor=approved)
    record.expires_at = timezone.now() - timedelta(seconds=1)
    record.save()
    assert enroll(client, token, tmp_path / "a").status_code == 403
    assert not Node.objects.exists()


def test_token_of_a_suspended_contributor_is_refused(client, approved, tls_superlink, tmp_path):
    token, _ = enrollment_token_create(contributor=approved)
    contributor_set_status(contributor=approved, status=Contributor.Status.SUSPENDED, reason="spam")
    assert enroll(client, token, tmp_path / "a").status_code == 403


def test_unknown_token_and_bad_key_are_refused_clearly(client, approved, tls_superlink, tmp_path):
    assert enroll(client, "bye_made-up", tmp_path / "a").status_code == 403
    token, _ = enrollment_token_create(contributor=approved)
    response = client.post(
        "/api/v1/nodes/enroll", {"token": token, "public_key": "nope"}, content_type="application/json"
    )
    assert response.status_code == 400 and "PEM" in response.json()["error"]


def test_heartbeat_needs_the_node_credential_and_is_rate_limited(client, approved, tls_superlink, tmp_path, settings):
    token, _ = enrollment_token_create(contributor=approved)
    api_token = enroll(client, token, tmp_path / "a").json()["api_token"]
    beat = lambda t: client.post(  # noqa: E731
        "/api/v1/nodes/heartbeat", {}, content_type="application/json", headers={"Authorization": f"Bearer {t}"}
    )
    assert beat("byn_wrong").status_code == 401
    assert beat(api_token).status_code == 200
    assert Node.objects.get().last_seen is not None
    settings.HEARTBEATS_PER_MINUTE = 3
    codes = [beat(api_token).status_code for _ in range(5)]
    assert 429 in codes


def test_suspended_node_is_told_why(client, approved, tls_superlink, tmp_path):
    token, _ = enrollment_token_create(contributor=approved)
    api_token = enroll(client, token, tmp_path / "a").json()["api_token"]
    node_suspend(node=Node.objects.get(), reason="sent NaN updates")
    response = client.post("/api/v1/nodes/heartbeat", {}, content_type="application/json",
                           headers={"Authorization": f"Bearer {api_token}"})  # fmt: skip
    assert response.status_code == 403 and response.json()["reason"] == "sent NaN updates"


def test_heartbeat_answer_says_what_the_superlink_sees_and_asks_it_once_per_cache_period(
    client, approved, tls_superlink, tmp_path, settings, monkeypatch
):
    from django.core.cache import cache

    from federation import control

    cache.clear()
    token, _ = enrollment_token_create(contributor=approved)
    api_token = enroll(client, token, tmp_path / "a").json()["api_token"]
    beat = lambda: client.post(  # noqa: E731
        "/api/v1/nodes/heartbeat", {}, content_type="application/json", headers={"Authorization": f"Bearer {api_token}"}
    )
    asked = []
    real = control.online_node_ids
    monkeypatch.setattr(control, "online_node_ids", lambda c: asked.append(1) or real(c))  # counts, still real
    # Registered, but no SuperNode runs with this key: the SuperLink sees it offline.
    assert beat().json()["superlink"] == "offline"
    assert beat().json()["superlink"] == "offline"
    assert len(asked) == 1  # the second heartbeat was answered from the cache

    cache.clear()
    settings.SUPERLINK_ADDRESS = "127.0.0.1:9"  # nothing listens: the site cannot tell
    response = beat()
    assert response.status_code == 200 and response.json()["superlink"] == "unknown"
