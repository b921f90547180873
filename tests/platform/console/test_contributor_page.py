"""A contributor's own page, `/me/` (console.contributor_views): who may see it, what it counts, and its
enrollment tokens (shown once, never cached, refusals explained)."""

from __future__ import annotations

import hashlib

import pytest
from django.contrib.auth import get_user_model

from campaigns.models import BaseCheckpoint, Campaign, Participation, Round
from community.models import Contributor, EnrollmentToken, Node
from community.services import contributor_set_status, contributor_signup
from releases.models import Release

pytestmark = pytest.mark.django_db
PASSWORD = "a-long-pass-phrase-42"


def _signup(client, username="ana"):
    data = {"username": username, "email": f"{username}@example.org", "password": PASSWORD, "accept_terms": "on"}
    return client.post("/signup/", data)


def _approved(username: str = "ana") -> Contributor:
    user = get_user_model().objects.create_user(username, f"{username}@example.org", PASSWORD)
    return Contributor.objects.create(user=user, display_name=username, status=Contributor.Status.APPROVED)


def test_anonymous_user_is_sent_to_login(client):
    response = client.get("/me/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_a_user_without_a_contributor_account_is_refused(client):
    user = get_user_model().objects.create_user("staffer", "s@example.org", PASSWORD, is_staff=True)
    client.force_login(user)
    for response in (client.get("/me/"), client.post("/me/tokens")):
        assert response.status_code == 403 and b"Not a contributor account" in response.content
    assert not EnrollmentToken.objects.exists()


def test_pending_contributor_sees_status_but_cannot_create_tokens(client):
    _signup(client)
    client.login(username="ana", password=PASSWORD)
    page = client.get("/me/")
    assert b"waiting for approval" in page.content
    assert client.post("/me/tokens").status_code == 403
    assert not EnrollmentToken.objects.exists()


def test_approved_contributor_gets_a_token_shown_once_and_stored_hashed(client):
    _signup(client)
    contributor_set_status(contributor=Contributor.objects.get(), status=Contributor.Status.APPROVED)
    client.login(username="ana", password=PASSWORD)
    page = client.post("/me/tokens").content.decode()
    token = page.split("<pre>")[1].split("</pre>")[0]
    assert token.startswith("bye_") and "python -m federation join --site" in page
    stored = EnrollmentToken.objects.get()
    assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in client.get("/me/").content.decode()  # never shown again


def test_the_page_showing_a_new_token_is_never_cached(client):
    client.force_login(_approved().user)
    response = client.post("/me/tokens")
    assert response.status_code == 200 and b"bye_" in response.content
    assert "no-store" in response["Cache-Control"]


def test_the_token_page_says_why_a_token_is_refused(client, settings):
    settings.MAX_OPEN_TOKENS_PER_CONTRIBUTOR = 1
    ana = _approved()
    client.force_login(ana.user)
    assert client.post("/me/tokens").status_code == 200
    refused = client.post("/me/tokens")
    assert refused.status_code == 409 and b"unused enrollment token" in refused.content
    assert EnrollmentToken.objects.filter(contributor=ana).count() == 1


def test_contributor_sees_only_their_own_nodes(client):
    ana = contributor_signup(username="ana", email="a@x.org", password=PASSWORD, accept_terms=True)
    bob = contributor_signup(username="bob", email="b@x.org", password=PASSWORD, accept_terms=True)
    Node.objects.create(contributor=ana, name="ana-laptop", flwr_node_id="1")
    Node.objects.create(contributor=bob, name="bob-server", flwr_node_id="2")
    client.login(username="ana", password=PASSWORD)
    page = client.get("/me/").content.decode()
    assert "ana-laptop" in page and "bob-server" not in page


def test_the_page_counts_only_the_contributors_completed_rounds_and_lists_their_releases(client, tmp_path):
    ana, bob = _approved("ana"), _approved("bob")
    laptop = Node.objects.create(contributor=ana, name="laptop")
    server = Node.objects.create(contributor=ana, name="pc")
    other = Node.objects.create(contributor=bob, name="bobs")
    base = BaseCheckpoint.objects.create(name="b", hf_id="org/b", path=str(tmp_path))

    def campaign(name: str) -> Campaign:
        return Campaign.objects.create(name=name, base_model=base, data_task="t", heldout_path="h")

    joined, failed_only, not_joined = campaign("joined"), campaign("failed-only"), campaign("bobs-only")
    one, two = Round.objects.create(campaign=joined, number=1), Round.objects.create(campaign=joined, number=2)
    Participation.objects.create(round=one, node=laptop, samples=10, tokens=100)
    Participation.objects.create(round=two, node=server, samples=5, tokens=50)
    Participation.objects.create(round=two, node=other, samples=999, tokens=9999)  # bob's: not ana's
    lost = Round.objects.create(campaign=failed_only, number=1)
    Participation.objects.create(round=lost, node=laptop, samples=7, tokens=70, error="out of memory")
    Participation.objects.create(round=Round.objects.create(campaign=not_joined, number=1), node=other, samples=1)
    for c in (joined, failed_only, not_joined):
        Release.objects.create(campaign=c, repo_id=f"bayanihan/{c.name}", revision="r" * 40, path=str(tmp_path))

    client.force_login(ana.user)
    response = client.get("/me/")
    context, page = response.context, response.content.decode()
    assert (context["rounds"], context["samples"], context["tokens"]) == (2, 15, 150)
    assert [r.repo_id for r in context["releases"]] == ["bayanihan/joined"]
    assert '<strong id="rounds">2</strong>' in page and "bayanihan/joined" in page
    assert "bayanihan/failed-only" not in page and "bayanihan/bobs-only" not in page
