"""Hardening of contributors and nodes: revocation on every status change, node and token caps, canonical keys,
login and sign-up limits, heartbeat order (docs/security.md). The
token page's own checks are in tests/platform/console/test_contributor_page.py.

None of these reach a SuperLink: nodes here have no Flower id (nothing to unregister) or are refused before one
would be registered. The SuperLink side of revocation is covered in test_enroll_and_heartbeat_api.py."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from community.models import Contributor, Node
from community.services import (
    _hash,
    canonical_public_key,
    contributor_set_status,
    enrollment_token_create,
    node_enroll,
)

pytestmark = pytest.mark.django_db
PASSWORD = "a-long-pass-phrase-42"


def _contributor(username: str = "ana", status: str = Contributor.Status.APPROVED) -> Contributor:
    user = get_user_model().objects.create_user(username, f"{username}@example.org", PASSWORD)
    return Contributor.objects.create(user=user, display_name=username, status=status)


def _pem() -> str:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_user("staffer", "s@example.org", PASSWORD, is_staff=True, is_superuser=True)
    client.force_login(user)
    return user


# --- 13.8: every status change away from approved revokes, through one service -------------------------------


@pytest.mark.parametrize("status", ["pending", "suspended", "rejected"])
def test_any_status_but_approved_revokes_nodes_and_voids_open_tokens(status):
    ana = _contributor()
    node = Node.objects.create(contributor=ana, name="laptop")
    _, record = enrollment_token_create(contributor=ana)
    contributor_set_status(contributor=ana, status=status, reason="")
    node.refresh_from_db()
    record.refresh_from_db()
    assert node.status == Node.Status.SUSPENDED and "contributor" in node.status_reason
    assert record.expires_at <= timezone.now()  # the unused token no longer enrolls anything


def test_setting_pending_in_the_console_revokes_the_nodes(client, staff):
    ana = _contributor()
    node = Node.objects.create(contributor=ana, name="laptop")
    client.post(f"/console/contributors/{ana.pk}/status", {"status": "pending", "reason": "re-check"})
    ana.refresh_from_db()
    node.refresh_from_db()
    assert ana.status == "pending" and node.status == Node.Status.SUSPENDED


def test_suspending_in_the_admin_change_form_revokes_the_nodes(client, staff):
    ana = _contributor()
    node = Node.objects.create(contributor=ana, name="laptop")
    response = client.post(
        f"/admin/community/contributor/{ana.pk}/change/",
        {"user": ana.user_id, "display_name": "ana", "status": "suspended", "status_reason": "spam"},
    )
    assert response.status_code == 302, response.content[:2000]
    ana.refresh_from_db()
    node.refresh_from_db()
    assert (ana.status, ana.status_reason) == ("suspended", "spam")
    assert (node.status, node.status_reason) == (Node.Status.SUSPENDED, "spam")


def test_other_edits_in_the_admin_change_form_leave_nodes_alone(client, staff):
    ana = _contributor()
    node = Node.objects.create(contributor=ana, name="laptop")
    client.post(
        f"/admin/community/contributor/{ana.pk}/change/",
        {"user": ana.user_id, "display_name": "Ana R.", "status": "approved", "status_reason": ""},
    )
    node.refresh_from_db()
    assert Contributor.objects.get(pk=ana.pk).display_name == "Ana R." and node.status == Node.Status.ACTIVE


def test_the_admin_cannot_delete_contributors_or_nodes(client, staff):
    """A deleted row would leave its nodes' keys admitted on the SuperLink: suspend instead."""
    ana = _contributor()
    node = Node.objects.create(contributor=ana, name="laptop")
    assert client.get(f"/admin/community/contributor/{ana.pk}/delete/").status_code == 403
    assert client.get(f"/admin/community/node/{node.pk}/delete/").status_code == 403


# --- 13.7: caps on nodes and open tokens per contributor ------------------------------------------------------


def test_open_enrollment_tokens_are_capped(settings):
    settings.MAX_OPEN_TOKENS_PER_CONTRIBUTOR, settings.MAX_NODES_PER_CONTRIBUTOR = 2, 10
    ana = _contributor()
    enrollment_token_create(contributor=ana)
    enrollment_token_create(contributor=ana)
    with pytest.raises(ValidationError, match="unused enrollment token"):
        enrollment_token_create(contributor=ana)


def test_active_nodes_and_open_tokens_together_are_capped(settings):
    settings.MAX_OPEN_TOKENS_PER_CONTRIBUTOR, settings.MAX_NODES_PER_CONTRIBUTOR = 5, 3
    ana = _contributor()
    for i in range(2):
        Node.objects.create(contributor=ana, name=f"n{i}")
    Node.objects.create(contributor=ana, name="old", status=Node.Status.SUSPENDED)  # revoked nodes do not count
    enrollment_token_create(contributor=ana)
    with pytest.raises(ValidationError, match="at most 3 nodes"):
        enrollment_token_create(contributor=ana)


def test_enrolling_past_the_node_cap_is_refused_before_the_superlink_is_asked(settings):
    settings.MAX_OPEN_TOKENS_PER_CONTRIBUTOR, settings.MAX_NODES_PER_CONTRIBUTOR = 5, 5
    ana = _contributor()
    tokens = [enrollment_token_create(contributor=ana)[0] for _ in range(2)]
    settings.MAX_NODES_PER_CONTRIBUTOR = 2  # e.g. lowered by staff while tokens were out
    for i in range(2):
        Node.objects.create(contributor=ana, name=f"n{i}")
    with pytest.raises(PermissionError, match="active nodes"):
        node_enroll(token=tokens[0], public_key=_pem(), name="third")
    assert Node.objects.filter(contributor=ana).count() == 2


# --- 13.15: one key, one node, whatever its PEM spelling -------------------------------------------------------


def test_a_key_in_crlf_or_rewrapped_pem_is_the_same_key():
    pem = _pem()
    crlf = pem.replace("\n", "\r\n")
    body = "".join(pem.splitlines()[1:-1])
    rewrapped = "-----BEGIN PUBLIC KEY-----\n" + "\n".join(body[i : i + 40] for i in range(0, len(body), 40))
    rewrapped += "\n-----END PUBLIC KEY-----\n  "
    assert canonical_public_key(crlf) == canonical_public_key(rewrapped) == canonical_public_key(pem) == pem


def test_the_same_key_with_crlf_line_ends_does_not_enroll_twice():
    ana = _contributor()
    pem = _pem()
    Node.objects.create(contributor=ana, name="first", public_key=canonical_public_key(pem))
    token, _ = enrollment_token_create(contributor=ana)
    with pytest.raises(ValidationError, match="already enrolled"):
        node_enroll(token=token, public_key=pem.replace("\n", "\r\n"), name="again")


def test_the_database_holds_one_node_per_key():
    pem = _pem()
    Node.objects.create(name="a", public_key=pem)
    Node.objects.create(name="no-key-yet-1")
    Node.objects.create(name="no-key-yet-2")  # rows without a key do not collide
    with pytest.raises(IntegrityError), transaction.atomic():
        Node.objects.create(name="b", public_key=pem)


# --- 13.9: login throttling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/login/", "/admin/login/"])
def test_password_guessing_is_answered_429_even_for_the_right_password(client, settings, url):
    settings.LOGIN_FAILURES_ALLOWED = 5
    user = get_user_model().objects.create_user("ana", "a@x.org", PASSWORD, is_staff=True)
    for i in range(5):
        assert client.post(url, {"username": "ana", "password": f"wrong-{i}"}).status_code == 200
    blocked = client.post(url, {"username": "ana", "password": PASSWORD})
    assert blocked.status_code == 429 and int(blocked["Retry-After"]) > 0
    assert "_auth_user_id" not in client.session
    assert user.is_active


def test_the_username_limit_holds_across_addresses(client, settings):
    settings.LOGIN_FAILURES_ALLOWED = 3
    get_user_model().objects.create_user("ana", "a@x.org", PASSWORD)
    for i in range(3):
        client.post("/login/", {"username": "ANA", "password": "x"}, REMOTE_ADDR=f"10.0.0.{i}")
    assert client.post("/login/", {"username": "ana", "password": PASSWORD}, REMOTE_ADDR="10.0.9.9").status_code == 429


def test_one_address_sweeping_usernames_is_limited(client, settings):
    settings.LOGIN_FAILURES_ALLOWED = 2  # per address: 4 x 2
    for i in range(8):
        assert client.post("/login/", {"username": f"user{i}", "password": "x"}).status_code == 200
    assert client.post("/login/", {"username": "someone-else", "password": "x"}).status_code == 429
    assert client.post("/login/", {"username": "x", "password": "x"}, REMOTE_ADDR="10.1.1.1").status_code == 200


def test_a_few_mistakes_then_the_right_password_logs_in_and_starts_the_count_again(client, settings):
    settings.LOGIN_FAILURES_ALLOWED = 3
    get_user_model().objects.create_user("ana", "a@x.org", PASSWORD)
    for _ in range(2):
        client.post("/login/", {"username": "ana", "password": "typo"})
    assert client.post("/login/", {"username": "ana", "password": PASSWORD}).status_code == 302
    client.logout()
    for _ in range(2):
        client.post("/login/", {"username": "ana", "password": "typo"})
    assert client.post("/login/", {"username": "ana", "password": PASSWORD}).status_code == 302


def test_signups_per_address_are_limited(client, settings):
    """Each sign-up says whether a username is taken: a per-address limit keeps that from being a fast oracle."""
    settings.SIGNUPS_PER_HOUR = 3
    for i in range(3):
        data = {"username": f"user{i}", "email": f"u{i}@x.org", "password": PASSWORD, "accept_terms": "on"}
        assert client.post("/signup/", data).status_code == 200
    blocked = client.post("/signup/", {"username": "ana", "email": "a@x.org", "password": PASSWORD})
    assert blocked.status_code == 429 and "Retry-After" in blocked


# --- 13.16: heartbeat order, the token page ---------------------------------------------------------------------


def test_a_revoked_node_is_told_why_even_past_the_heartbeat_rate(client, settings):
    settings.HEARTBEATS_PER_MINUTE = 1
    Node.objects.create(name="n", api_token_hash=_hash("byn_x"), status=Node.Status.SUSPENDED, status_reason="abuse")
    for _ in range(3):
        response = client.post(
            "/api/v1/nodes/heartbeat", {}, content_type="application/json", headers={"Authorization": "Bearer byn_x"}
        )
        assert response.status_code == 403 and response.json()["reason"] == "abuse"
