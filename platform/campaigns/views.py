"""The ServerApp's API (its server config and its reports: authenticated by the link secret, a bearer token only
the SuperLink host holds, and the Flower run id; no cookies, so no CSRF), and the public base-model list."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.exceptions import ValidationError
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from bayanihan_site.accel import ACCEL_REDIRECT, accel_location
from campaigns import selectors
from campaigns.models import Campaign
from campaigns.services import reports
from campaigns.services.runs import campaign_server_paths
from federation import events
from federation.artifacts import CONTENT_SHA256_HEADER
from federation.report import RUN_ID_HEADER


def report_auth(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    def wrapped(request: HttpRequest, campaign_id: int, **kwargs: Any) -> HttpResponse:
        # An unknown campaign gets the same answer as a wrong secret: the API does not tell which ids exist.
        campaign = Campaign.objects.filter(pk=campaign_id).first()
        if campaign is None:
            return JsonResponse({"error": "invalid link secret"}, status=403)
        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        try:
            reports.report_link_check(
                campaign=campaign,
                secret=secret if scheme == "Bearer" else "",
                run_id=request.headers.get(RUN_ID_HEADER, ""),
            )
        except reports.ReportRefused as exc:
            response = JsonResponse({"error": str(exc)}, status=exc.status)
            if exc.status == 503:
                response["Retry-After"] = "2"
            return response
        return view(request, campaign, **kwargs)

    return wrapped


@require_http_methods(["GET"])
@report_auth
def server_config(request: HttpRequest, campaign: Campaign) -> HttpResponse:
    """Paths on the SuperLink host the ServerApp needs; kept out of the run config, which every node receives."""
    response = JsonResponse(campaign_server_paths(campaign).to_json())
    response["Cache-Control"] = "no-store"
    return response


# The events that go on a round's record: a merged round, then its held-out evaluation (federation.events).
EVENT_RECORDERS = {
    events.EVENT_ROUND: (reports.report_round, "round event"),
    events.EVENT_EVALUATED: (reports.report_evaluation, "evaluation event"),
}


@csrf_exempt
@require_http_methods(["POST"])
@report_auth
def report_event(request: HttpRequest, campaign: Campaign) -> HttpResponse:
    try:
        event = json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        return JsonResponse({"error": f"body is not JSON: {exc}"}, status=400)
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return JsonResponse({"error": "event must be an object with a 'type' (a string)"}, status=400)
    recorder = EVENT_RECORDERS.get(event["type"])
    if recorder is not None:
        record, what = recorder
        try:
            record(campaign=campaign, event=event)
        except reports.ReportConflict as exc:
            return JsonResponse({"error": " ".join(exc.messages)}, status=409)
        except ValidationError as exc:
            return JsonResponse({"error": f"malformed {what}: {' '.join(exc.messages)}"}, status=400)
    elif event["type"] == events.EVENT_FAILED:
        reports.report_failure(campaign=campaign, event=event)
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
        location = accel_location(path)
        if location is None:
            response: HttpResponse = FileResponse(path.open("rb"), content_type="application/octet-stream")
        else:  # the site's front proxy sends the bytes (bayanihan_site/accel.py)
            response = HttpResponse(content_type="application/octet-stream")
            response[ACCEL_REDIRECT] = location
        response[CONTENT_SHA256_HEADER] = sha
        return response
    # Read the body as a stream so a large upload never sits whole in memory.
    chunks = iter(lambda: request.read(1 << 20), b"")
    try:
        sha = reports.report_file(
            campaign=campaign,
            round_number=round_number,
            name=name,
            chunks=chunks,
            sha256=request.headers.get(CONTENT_SHA256_HEADER, ""),
        )
    except reports.ReportConflict as exc:
        return JsonResponse({"error": " ".join(exc.messages)}, status=409)
    except ValidationError as exc:
        return JsonResponse({"error": " ".join(exc.messages)}, status=400)
    return JsonResponse({"sha256": sha})


@require_http_methods(["GET"])
def base_models(request: HttpRequest) -> HttpResponse:
    # Public: the hashes of published base models are no secret, and `join` checks a contributor's
    # checkpoint against them before enrolling (federation/preflight.py).
    return JsonResponse({"base_models": selectors.base_models_public()})
