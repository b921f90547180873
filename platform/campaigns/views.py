"""The ServerApp's report API: bearer-token per campaign, no cookies, so no CSRF."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.exceptions import ValidationError
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from campaigns import selectors, services
from campaigns.models import Campaign


def report_auth(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    def wrapped(request: HttpRequest, campaign_id: int, **kwargs: Any) -> HttpResponse:
        campaign = get_object_or_404(Campaign, pk=campaign_id)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not services.report_token_valid(campaign, token):
            return JsonResponse({"error": "invalid or expired report token for this campaign"}, status=403)
        return view(request, campaign, **kwargs)

    return wrapped


@csrf_exempt
@require_http_methods(["POST"])
@report_auth
def report_event(request: HttpRequest, campaign: Campaign) -> HttpResponse:
    try:
        event = json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return JsonResponse({"error": f"body is not JSON: {exc}"}, status=400)
    if not isinstance(event, dict) or "type" not in event:
        return JsonResponse({"error": "event must be an object with a 'type'"}, status=400)
    if event["type"] == "round":
        try:
            services.report_round(campaign=campaign, event=event)
        except (KeyError, TypeError, ValueError) as exc:
            return JsonResponse({"error": f"malformed round event: {exc!r}"}, status=400)
    elif event["type"] == "failed":
        services.report_failure(campaign=campaign, event=event)
    return JsonResponse({"ok": True})


@csrf_exempt
@require_http_methods(["PUT", "GET"])
@report_auth
def report_file(request: HttpRequest, campaign: Campaign, round_number: int, name: str) -> HttpResponse:
    if request.method == "GET":  # a resumed run fetches the merged adapter it continues from (Reporter.download_round)
        try:
            path, sha = selectors.round_file(campaign=campaign, round_number=round_number, name=name)
        except LookupError as exc:
            return JsonResponse({"error": str(exc)}, status=404)
        response = FileResponse(path.open("rb"), content_type="application/octet-stream")
        response["X-Content-SHA256"] = sha
        return response
    # Read the body as a stream so a large upload never sits whole in memory.
    chunks = iter(lambda: request.read(1 << 20), b"")
    try:
        sha = services.report_file(
            campaign=campaign,
            round_number=round_number,
            name=name,
            chunks=chunks,
            sha256=request.headers.get("X-Content-SHA256", ""),
        )
    except ValidationError as exc:
        return JsonResponse({"error": " ".join(exc.messages)}, status=400)
    return JsonResponse({"sha256": sha})
