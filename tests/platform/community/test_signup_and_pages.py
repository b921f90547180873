"""Sign-up, approval states and enrollment tokens. The contributor's own page is in
tests/platform/console/test_contributor_page.py."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from community.models import Contributor, EnrollmentToken
from community.services import contributor_signup, enrollment_token_create

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


def test_token_requires_an_approved_contributor():
    pending = contributor_signup(username="cy", email="c@x.org", password="a-long-pass-phrase-42", accept_terms=True)
    with pytest.raises(ValidationError, match="Only approved contributors can enroll nodes"):
        enrollment_token_create(contributor=pending)
    assert not EnrollmentToken.objects.exists()  # nothing was issued
    pending.status = Contributor.Status.APPROVED
    pending.save()
    token, row = enrollment_token_create(contributor=pending)  # the same contributor, once approved, gets one
    assert token and row.contributor == pending and EnrollmentToken.objects.count() == 1
