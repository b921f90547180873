"""Staff actions from the console: launch a draft, cancel, resume a failed or cancelled campaign, set its card notes."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from bayanihan_site.superlink import superlink_client
from campaigns.models import Campaign, CampaignAttempt
from campaigns.services.runs import _attempt_end, _attempt_queue
from federation import control

log = logging.getLogger(__name__)


def campaign_launch(*, campaign: Campaign, by: Any = None) -> Campaign:
    """Queue a draft campaign; the worker submits it once this transaction has committed."""
    from campaigns.tasks import campaign_submit_task, enqueue

    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if campaign.status != Campaign.Status.DRAFT:
            raise ValidationError(f"campaign is {campaign.status}; only a draft can be launched")
        campaign.status = Campaign.Status.QUEUED
        campaign.launched_at = timezone.now()
        campaign.save(update_fields=["status", "launched_at"])
        _attempt_queue(campaign, CampaignAttempt.Trigger.LAUNCH)
        transaction.on_commit(lambda: enqueue(campaign_submit_task, campaign.pk))
    return campaign


def campaign_cancel(*, campaign: Campaign, by: Any = None, reason: str = "") -> Campaign:
    """Stop a queued or running campaign: its Flower run is stopped on the SuperLink, the campaign is cancelled.

    Marked cancelled first so that the follow task, seeing the stopped run, leaves it alone (it is terminal),
    and the ServerApp's reports from then on are refused.
    """
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if campaign.status not in (Campaign.Status.QUEUED, Campaign.Status.RUNNING):
            raise ValidationError(f"campaign is {campaign.status}; only a queued or running one can be cancelled")
        who = getattr(by, "username", None) or "staff"
        campaign.status = Campaign.Status.CANCELLED
        campaign.status_reason = f"cancelled by {who}" + (f": {reason}" if reason else "")
        _attempt_end(campaign, CampaignAttempt.Outcome.CANCELLED, reason=campaign.status_reason)
        campaign.finished_at = timezone.now()
        campaign.save(update_fields=["status", "status_reason", "finished_at"])
    if campaign.flwr_run_id:
        try:
            control.stop_run(superlink_client(), int(campaign.flwr_run_id))
        except Exception as exc:  # the run may already have ended; the campaign stays cancelled either way
            log.warning("campaign %s: stopping Flower run %s failed: %s", campaign.pk, campaign.flwr_run_id, exc)
    log.info("campaign %s cancelled by %s", campaign.pk, getattr(by, "username", by))
    return campaign


def campaign_resume(*, campaign: Campaign, by: Any = None) -> Campaign:
    """Relaunch a failed or cancelled campaign as a new Flower run that continues from its last merged round.

    Rounds 0..last merged stay on record (the new run starts from that round's merged adapter and numbers its
    rounds on from there); a partial round after it is dropped when the run is submitted and redone. A campaign
    with no merged round starts from round 0. The new attempt starts a fresh count against `max_attempts`.
    """
    from campaigns.tasks import campaign_submit_task, enqueue

    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if campaign.status not in (Campaign.Status.FAILED, Campaign.Status.CANCELLED):
            raise ValidationError(f"campaign is {campaign.status}; only a failed or cancelled one can be resumed")
        campaign.status = Campaign.Status.QUEUED
        campaign.status_reason = ""
        campaign.flwr_run_id = ""
        campaign.launched_at = timezone.now()
        campaign.finished_at = None
        campaign.save(update_fields=["status", "status_reason", "flwr_run_id", "launched_at", "finished_at"])
        _attempt_queue(campaign, CampaignAttempt.Trigger.RESUME)
        transaction.on_commit(lambda: enqueue(campaign_submit_task, campaign.pk))
    log.info("campaign %s resumed by %s", campaign.pk, getattr(by, "username", by))
    return campaign


def campaign_set_card_notes(*, campaign: Campaign, notes: str, by: Any = None) -> Campaign:
    """Staff's free text for the model card; it can change only until the release is published (then immutable)."""
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if hasattr(campaign, "release"):  # the reverse one-to-one of releases.Release: published
            raise ValidationError({"card_notes": "the release is published; its model card can no longer change"})
        campaign.card_notes = notes.strip()
        campaign.save(update_fields=["card_notes"])
    return campaign
