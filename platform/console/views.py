"""Staff console. Pages read through selectors; each action is a POST that calls one service and audits it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import models
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from campaigns.models import Campaign
from campaigns.services import actions as campaign_actions
from campaigns.services.setup import campaign_create
from community import services as community_services
from community.models import Contributor, Node
from console import selectors
from console.decorators import staff_required
from console.forms import CampaignForm
from console.services import audit
from releases import services as release_services
from releases.models import Release

log = logging.getLogger(__name__)


def _act(
    request: HttpRequest, target: models.Model, action: str, run: Callable[[], Any], done: str, **detail: Any
) -> None:
    """Run one service; audit it when it worked, and tell the user either way (refusals say why)."""
    try:
        run()
    except ValidationError as exc:
        messages.error(request, f"{action} refused: {'; '.join(exc.messages)}")
        return
    except Exception as exc:  # e.g. the SuperLink is unreachable: say so on the page rather than a bare 500
        log.exception("console action %s on %r failed", action, target)
        messages.error(request, f"{action} failed: {exc}")
        return
    audit(by=request.user, action=action, target=target, **detail)
    messages.success(request, done)


@require_GET
@staff_required
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "console/dashboard.html", selectors.dashboard())


# --- campaigns ------------------------------------------------------------------------------


@require_GET
@staff_required
def campaign_list(request: HttpRequest) -> HttpResponse:
    return render(request, "console/campaigns.html", {"campaigns": selectors.campaign_list()})


@require_http_methods(["GET", "POST"])
@staff_required
def campaign_new(request: HttpRequest) -> HttpResponse:
    form = CampaignForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            campaign = campaign_create(**form.service_kwargs(), by=request.user)
        except ValidationError as exc:
            form.add_service_errors(exc)
        else:
            audit(by=request.user, action="campaign.create", target=campaign)
            messages.success(request, f"Campaign “{campaign.name}” created as a draft. Launch it when ready.")
            return redirect("console:campaign", pk=campaign.pk)
    return render(request, "console/campaign_new.html", {"form": form, "has_models": selectors.base_models().exists()})


@require_GET
@staff_required
def campaign_detail(request: HttpRequest, pk: int) -> HttpResponse:
    campaign = get_object_or_404(Campaign.objects.select_related("base_model", "created_by"), pk=pk)
    return render(request, "console/campaign.html", selectors.campaign_live(campaign))


@require_GET
@staff_required
def campaign_live(request: HttpRequest, pk: int) -> HttpResponse:
    """The part of the campaign page that changes while it runs, as an HTML fragment for the page's poller."""
    campaign = get_object_or_404(Campaign, pk=pk)
    return render(request, "console/_campaign_live.html", selectors.campaign_live(campaign))


def _campaign_action(request: HttpRequest, pk: int, action: str, run: Callable[[Campaign], Any], done: str):
    campaign = get_object_or_404(Campaign, pk=pk)
    _act(request, campaign, f"campaign.{action}", lambda: run(campaign), done)
    return redirect("console:campaign", pk=pk)


@require_POST
@staff_required
def campaign_launch(request: HttpRequest, pk: int) -> HttpResponse:
    return _campaign_action(
        request, pk, "launch", lambda c: campaign_actions.campaign_launch(campaign=c, by=request.user), "Launched."
    )


@require_POST
@staff_required
def campaign_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    reason = request.POST.get("reason", "").strip()
    campaign = get_object_or_404(Campaign, pk=pk)
    _act(
        request,
        campaign,
        "campaign.cancel",
        lambda: campaign_actions.campaign_cancel(campaign=campaign, by=request.user, reason=reason),
        "Cancelled; its Flower run was stopped.",
        reason=reason,
    )
    return redirect("console:campaign", pk=pk)


@require_POST
@staff_required
def campaign_resume(request: HttpRequest, pk: int) -> HttpResponse:
    return _campaign_action(
        request,
        pk,
        "resume",
        lambda c: campaign_actions.campaign_resume(campaign=c, by=request.user),
        "Relaunched as a new Flower run; it continues from the last merged round.",
    )


@require_POST
@staff_required
def campaign_notes(request: HttpRequest, pk: int) -> HttpResponse:
    notes = request.POST.get("card_notes", "")
    campaign = get_object_or_404(Campaign, pk=pk)
    _act(
        request,
        campaign,
        "campaign.card_notes",
        lambda: campaign_actions.campaign_set_card_notes(campaign=campaign, notes=notes, by=request.user),
        "Model card notes saved.",
        notes=notes.strip()[:500],
    )
    return redirect("console:campaign", pk=pk)


@require_POST
@staff_required
def campaign_publish(request: HttpRequest, pk: int) -> HttpResponse:
    return _campaign_action(
        request,
        pk,
        "publish",
        lambda c: release_services.campaign_publish(campaign=c, by=request.user),
        "Release published.",
    )


# --- people and nodes -----------------------------------------------------------------------


@require_GET
@staff_required
def people(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "console/people.html",
        {"contributors": selectors.contributors(), "nodes": selectors.nodes(), "statuses": Contributor.Status},
    )


@require_POST
@staff_required
def contributor_status(request: HttpRequest, pk: int) -> HttpResponse:
    contributor = get_object_or_404(Contributor, pk=pk)
    status, reason = request.POST.get("status", ""), request.POST.get("reason", "").strip()
    _act(
        request,
        contributor,
        f"contributor.{status or 'status'}",
        lambda: community_services.contributor_set_status(
            contributor=contributor, status=status, by=request.user, reason=reason
        ),
        f"{contributor.display_name}: {status}.",
        reason=reason,
    )
    return redirect("console:people")


@require_POST
@staff_required
def node_suspend(request: HttpRequest, pk: int) -> HttpResponse:
    node = get_object_or_404(Node, pk=pk)
    reason = request.POST.get("reason", "").strip() or "suspended by staff"
    _act(
        request,
        node,
        "node.suspend",
        lambda: community_services.node_suspend(node=node, by=request.user, reason=reason),
        f"{node.name} suspended; its key is revoked on the SuperLink.",
        reason=reason,
    )
    return redirect("console:people")


# --- releases and audit ---------------------------------------------------------------------


@require_GET
@staff_required
def release_list(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "console/releases.html",
        {"releases": selectors.releases(), "awaiting_publish": selectors.unpublished_campaigns()},
    )


@require_POST
@staff_required
def release_yank(request: HttpRequest, pk: int) -> HttpResponse:
    release = get_object_or_404(Release, pk=pk)
    reason = request.POST.get("reason", "").strip()
    _act(
        request,
        release,
        "release.yank",
        lambda: release_services.release_yank(release=release, by=request.user, reason=reason),
        f"{release} yanked: hidden from everyone but staff, kept on disk.",
        reason=reason,
    )
    if request.POST.get("next") == "campaign":
        return redirect("console:campaign", pk=release.campaign_id)
    return redirect("console:releases")


@require_GET
@staff_required
def audit_log(request: HttpRequest) -> HttpResponse:
    return render(request, "console/audit.html", {"entries": selectors.audit_log()})
