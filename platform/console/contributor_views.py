"""A contributor's own page, `/me/`: their account, enrollment tokens, nodes, the rounds their nodes joined and
the releases that include them.

It lives here, not in `community`, because it reads every app below the console (community's nodes, campaigns'
rounds, releases): `community` stays at the bottom of the app order and imports neither. Unlike `console.views`
(staff only), any logged-in contributor reaches these pages, and each sees only their own record.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from community import services as community_services
from community.models import Contributor
from console import selectors

PAGE = "console/contributor_home.html"
NOT_A_CONTRIBUTOR = "console/no_contributor.html"


def _contributor(request: HttpRequest) -> Contributor | None:
    return Contributor.objects.filter(user=request.user).first()


@login_required
def home(request: HttpRequest) -> HttpResponse:
    contributor = _contributor(request)
    if contributor is None:
        return render(request, NOT_A_CONTRIBUTOR, status=403)
    return render(request, PAGE, selectors.contributor_overview(contributor))


@never_cache  # the page shows a live enrollment token: no cache (browser, proxy) may keep a copy
@login_required
@require_POST
def token_create(request: HttpRequest) -> HttpResponse:
    contributor = _contributor(request)
    if contributor is None or contributor.status != Contributor.Status.APPROVED:
        return render(request, NOT_A_CONTRIBUTOR, status=403)
    try:
        token, record = community_services.enrollment_token_create(contributor=contributor)
    except ValidationError as exc:
        context = selectors.contributor_overview(contributor)
        context["token_error"] = " ".join(exc.messages)
        return render(request, PAGE, context, status=409)
    context = selectors.contributor_overview(contributor)
    context.update(
        new_token=token, token_expires=record.expires_at, site_url=request.build_absolute_uri("/").rstrip("/")
    )
    return render(request, PAGE, context)
