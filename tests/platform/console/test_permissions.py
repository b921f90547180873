"""Only staff reach the console, and what refused users send changes nothing (status codes per route: test_routes)."""

from __future__ import annotations

import pytest
from django.test import Client

from campaigns.models import Campaign
from campaigns.services.setup import campaign_create
from community.models import Contributor

PASSWORD = "a-long-pass-phrase-42"  # the conftest users' password

pytestmark = pytest.mark.django_db

PAGES = ["/console/", "/console/campaigns/", "/console/campaigns/new", "/console/people/", "/console/releases/",
         "/console/audit/"]  # fmt: skip


@pytest.fixture
def campaign(base, heldout) -> Campaign:
    return campaign_create(name="c", base_model=base, data_task="t", heldout_path=heldout)


def campaign_pages(campaign: Campaign) -> list[str]:
    return [f"/console/campaigns/{campaign.pk}/", f"/console/campaigns/{campaign.pk}/live"]


def actions(campaign: Campaign, contributor: Contributor) -> list[tuple[str, dict[str, str]]]:
    return [
        (f"/console/campaigns/{campaign.pk}/launch", {}),
        (f"/console/campaigns/{campaign.pk}/cancel", {}),
        (f"/console/campaigns/{campaign.pk}/resume", {}),
        (f"/console/campaigns/{campaign.pk}/notes", {"card_notes": "hi"}),
        (f"/console/campaigns/{campaign.pk}/publish", {}),
        (f"/console/contributors/{contributor.pk}/status", {"status": "approved"}),
        ("/console/campaigns/new", {"name": "x"}),
    ]


def test_staff_see_every_console_page(client, staff, campaign):
    client.force_login(staff)
    for url in PAGES + campaign_pages(campaign):
        assert client.get(url).status_code == 200, url


def test_anonymous_users_are_sent_to_log_in_and_back(client, campaign):
    for url in PAGES + campaign_pages(campaign):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/?next=/console/"), url


def test_contributors_are_refused_every_page_and_action(client, contributor, campaign):
    client.login(username="ana", password=PASSWORD)
    for url in PAGES + campaign_pages(campaign):
        assert client.get(url).status_code == 403, url
    for url, data in actions(campaign, contributor):
        assert client.post(url, data).status_code == 403, url
    contributor.refresh_from_db()
    assert contributor.status == Contributor.Status.PENDING  # nothing changed
    assert Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.DRAFT


def test_anonymous_posts_change_nothing(client, contributor, campaign):
    for url, data in actions(campaign, contributor):
        assert client.post(url, data).status_code == 302, url
    contributor.refresh_from_db()
    assert contributor.status == Contributor.Status.PENDING


def test_actions_refuse_get(client, staff, campaign, contributor):
    client.force_login(staff)
    for url, _ in actions(campaign, contributor)[:-1]:  # campaigns/new is also a form page (GET)
        assert client.get(url).status_code == 405, url


def test_actions_without_a_csrf_token_are_refused(staff, contributor, campaign):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    for url, data in actions(campaign, contributor):
        assert client.post(url, data).status_code == 403, url
    contributor.refresh_from_db()
    assert contributor.status == Contributor.Status.PENDING
    # The same request with the page's token goes through.
    page = client.get("/console/people/")
    token = page.cookies["csrftoken"].value
    response = client.post(
        f"/console/contributors/{contributor.pk}/status", {"status": "approved", "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302
    contributor.refresh_from_db()
    assert contributor.status == Contributor.Status.APPROVED
