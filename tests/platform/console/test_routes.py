"""Every console route, taken from the URLconf itself (not a hand-kept list): a route added tomorrow is covered
without anyone remembering to add it here.

What each route allows is read from the route (a staff DELETE, which no route accepts, is answered 405 with the
methods it does accept in `Allow`); then for each allowed method: anonymous → login, contributor → 403, and a
POST without a CSRF token → 403. The object ids do not exist: the checks run before any object is looked up.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import URLPattern, reverse

from console import urls as console_urls

PASSWORD = "a-long-pass-phrase-42"  # the conftest users' password

pytestmark = pytest.mark.django_db


def routes() -> list[tuple[str, str]]:
    """(name, URL) of every console route, ids filled with one that exists nowhere."""
    found = []
    for pattern in console_urls.urlpatterns:
        assert isinstance(pattern, URLPattern), f"{pattern}: nested includes need handling here"
        kwargs = dict.fromkeys(pattern.pattern.converters, 999_999)
        found.append((pattern.name, reverse(f"{console_urls.app_name}:{pattern.name}", kwargs=kwargs)))
    return found


def allowed(client: Client, url: str) -> set[str]:
    response = client.generic("DELETE", url)
    assert response.status_code == 405, f"{url} accepts DELETE"
    return {m.strip() for m in response["Allow"].split(",")}


@pytest.fixture
def methods(staff) -> dict[str, set[str]]:
    client = Client()
    client.force_login(staff)
    return {url: allowed(client, url) for _, url in routes()}


def test_the_routes_come_from_the_urlconf_and_accept_only_get_or_post(methods):
    names = {name for name, _ in routes()}
    assert {"node-suspend", "release-yank", "campaign-launch", "dashboard"} <= names  # the ones lists used to miss
    for url, accepted in methods.items():
        assert accepted and accepted <= {"GET", "POST"}, (url, accepted)


def test_anonymous_users_are_sent_to_log_in_on_every_route(methods):
    client = Client()
    for url, accepted in methods.items():
        for method in accepted:
            response = client.generic(method, url)
            assert response.status_code == 302, (method, url)
            assert response["Location"].startswith(f"/login/?next={url}"), (method, url)


def test_contributors_are_refused_every_route(methods, contributor):
    client = Client()
    assert client.login(username="ana", password=PASSWORD)
    for url, accepted in methods.items():
        for method in accepted:
            assert client.generic(method, url).status_code == 403, (method, url)


def test_actions_refuse_get_and_a_post_without_csrf_token(methods, staff):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    for url, accepted in methods.items():
        if "GET" not in accepted:
            assert client.get(url).status_code == 405, url
        if "POST" in accepted:
            assert client.post(url, {}).status_code == 403, url


def test_inactive_staff_are_refused_every_route(methods, staff):
    staff.is_active = False
    staff.save()
    client = Client()
    client.force_login(staff)
    for url, accepted in methods.items():
        for method in accepted:
            response = client.generic(method, url)
            # Django logs an inactive user out (ModelBackend refuses them): they are sent to log in, never served.
            assert response.status_code == 302 and response["Location"].startswith("/login/"), (method, url)
