"""Sign-up, approval states, enrollment tokens, and who may see which contributor page."""

from __future__ import annotations

import hashlib

import pytest

from community.models import Contributor, EnrollmentToken, Node
from community.services import contributor_set_status, contributor_signup, enrollment_token_create

pytestmark = pytest.mark.django_db


def signup(client, username="ana", accept=True):
    data = {"username": username, "email": f"{username}@example.org", "password": "a-long-pass-phrase-42"}
    if accept:
        data["accept_terms"] = "on"
    return client.post("/signup/", data)


def test_signup_records_terms_and_waits_for_approval(client, settings):
    response = signup(client)
    assert response.status_code == 200 and b"waiting for approval" in response.content
    contributor = Contributor.objects.get(user__username="ana")
    assert contributor.status == Contributor.Status.PENDING
    assert contributor.terms_version == settings.TERMS_VERSION and contributor.terms_accepted_at


def test_signup_without_accepting_terms_creates_nothing(client):
    response = signup(client, accept=False)
    assert response.status_code == 200 and b"accept" in response.content
    assert not Contributor.objects.exists()


def test_pending_contributor_sees_status_but_cannot_create_tokens(client):
    signup(client)
    client.login(username="ana", password="a-long-pass-phrase-42")
    page = client.get("/me/")
    assert b"waiting for approval" in page.content
    assert client.post("/me/tokens").status_code == 403
    assert not EnrollmentToken.objects.exists()


def test_approved_contributor_gets_a_token_shown_once_and_stored_hashed(client):
    signup(client)
    contributor = Contributor.objects.get()
    contributor_set_status(contributor=contributor, status=Contributor.Status.APPROVED)
    client.login(username="ana", password="a-long-pass-phrase-42")
    page = client.post("/me/tokens").content.decode()
    token = page.split("<pre>")[1].split("</pre>")[0]
    assert token.startswith("bye_") and "python -m federation join --site" in page
    stored = EnrollmentToken.objects.get()
    assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in client.get("/me/").content.decode()  # never shown again


def test_anonymous_user_is_sent_to_login(client):
    response = client.get("/me/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_contributor_sees_only_their_own_nodes(client):
    ana = contributor_signup(username="ana", email="a@x.org", password="a-long-pass-phrase-42", accept_terms=True)
    bob = contributor_signup(username="bob", email="b@x.org", password="a-long-pass-phrase-42", accept_terms=True)
    Node.objects.create(contributor=ana, name="ana-laptop", flwr_node_id="1")
    Node.objects.create(contributor=bob, name="bob-server", flwr_node_id="2")
    client.login(username="ana", password="a-long-pass-phrase-42")
    page = client.get("/me/").content.decode()
    assert "ana-laptop" in page and "bob-server" not in page


def test_token_requires_an_approved_contributor():
    pending = contributor_signup(username="cy", email="c@x.org", password="a-long-pass-phrase-42", accept_terms=True)
    with pytest.raises(Exception, match="approved"):
        enrollment_token_create(contributor=pending)
