"""Sign-up (session + CSRF) and the node API (per-node bearer tokens, no cookies).

A contributor's own page, `/me/`, reads campaigns and releases as well, so it lives above them:
`console.contributor_views`.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from bayanihan_site import throttle
from community import selectors, services
from community.forms import SignupForm
from community.models import Node


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        # Each attempt also says whether a username is taken: a per-address limit keeps that from being a fast
        # username oracle (and sign-up from being a spam vector).
        wait = throttle.retry_after("signup", request)
        if wait:
            return throttle.too_many(wait, "sign-ups")
        throttle.count("signup", request)
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.contributor_signup(**form.cleaned_data)
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, messages)
        else:
            return render(request, "community/signup_done.html", {"username": form.cleaned_data["username"]})
    return render(request, "community/signup.html", {"form": form})


# --- node API -------------------------------------------------------------------------------


def _json(request: HttpRequest) -> dict[str, Any] | None:
    try:
        body = json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


@csrf_exempt
@require_POST
def api_enroll(request: HttpRequest) -> JsonResponse:
    body = _json(request)
    if body is None:
        return JsonResponse({"error": "body must be a JSON object"}, status=400)
    try:
        enrollment = services.node_enroll(
            token=str(body.get("token", "")), public_key=str(body.get("public_key", "")), name=str(body.get("name", ""))
        )
    except PermissionError as exc:
        return JsonResponse({"error": str(exc)}, status=403)
    except ValidationError as exc:
        return JsonResponse({"error": "; ".join(exc.messages)}, status=400)
    return JsonResponse(
        {
            "node_id": enrollment.node.flwr_node_id,
            "pseudonym": enrollment.node.pseudonym,
            "api_token": enrollment.api_token,
            "superlink": enrollment.superlink,
            "ca_certificate": enrollment.ca_certificate,
        },
        status=201,
    )


def _rate_limited(node: Node, per_minute: int) -> bool:
    key = f"heartbeat:{node.pk}"
    cache.add(key, 0, timeout=60)
    return cache.incr(key) > per_minute


@csrf_exempt
@require_POST
def api_heartbeat(request: HttpRequest) -> JsonResponse:
    from django.conf import settings

    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    node = services.node_by_api_token(token) if scheme == "Bearer" else None
    if node is None:
        return JsonResponse({"error": "unknown node credential"}, status=401)
    if node.status != Node.Status.ACTIVE:
        # Before the rate limit: a revoked node learns why (and stops) instead of being told only to slow down.
        return JsonResponse({"status": node.status, "reason": node.status_reason}, status=403)
    if _rate_limited(node, settings.HEARTBEATS_PER_MINUTE):
        return JsonResponse({"error": "too many heartbeats; slow down"}, status=429)
    services.node_heartbeat(node=node, report=_json(request) or {})
    last = node.participations.select_related("round__campaign").order_by("-round__recorded_at").first()
    return JsonResponse(
        {
            "status": node.status,
            "pseudonym": node.pseudonym,
            # What the SuperLink sees: lets `join` restart a SuperNode that is alive but no longer connected.
            "superlink": selectors.node_superlink_presence(node),
            "last_round": (
                {
                    "campaign": last.round.campaign.name,
                    "round": last.round.number,
                    "train_loss": last.train_loss,
                    "error": last.error,
                }
                if last
                else None
            ),
        }
    )
