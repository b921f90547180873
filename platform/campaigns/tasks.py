"""Celery tasks take ids, call one service, and retry only what can pass by itself."""

from __future__ import annotations

import logging

import httpx
from celery import shared_task
from celery.signals import worker_ready
from django import db
from django.conf import settings
from django.core.cache import cache

from campaigns.services import runs

log = logging.getLogger(__name__)


def enqueue(task, campaign_id: int, countdown: float | None = None) -> None:
    """Send to the queue named in settings at call time (tests and deployments can each have their own)."""
    task.apply_async((campaign_id,), countdown=countdown, queue=settings.CELERY_TASK_DEFAULT_QUEUE)


# A SuperLink that is restarting or briefly unreachable, or the database restarting (OperationalError: connection
# refused or terminated; InterfaceError: a connection already closed); anything else is a real failure. Without the
# database errors here, one database restart ended the campaign's follow chain for good (or, at submit, failed it).
TRANSIENT = (
    httpx.TransportError,
    httpx.HTTPStatusError,
    ConnectionError,
    TimeoutError,
    db.OperationalError,
    db.InterfaceError,
)


@shared_task(bind=True, autoretry_for=TRANSIENT, retry_backoff=True, retry_backoff_max=60, max_retries=20)
def campaign_submit_task(self, campaign_id: int) -> None:
    try:
        runs.campaign_submit(campaign_id=campaign_id)
    except TRANSIENT:
        raise
    except Exception as exc:  # a run the SuperLink refuses will not start on retry: say why
        from campaigns.models import Campaign

        campaign = Campaign.objects.filter(pk=campaign_id).first()
        if campaign is not None:
            runs.campaign_fail(campaign=campaign, reason=f"could not submit to the SuperLink: {exc}")
        return
    enqueue(campaign_follow_task, campaign_id, countdown=settings.CAMPAIGN_POLL_SECONDS)


@shared_task(bind=True, autoretry_for=TRANSIENT, retry_backoff=True, retry_backoff_max=60, max_retries=50)
def campaign_follow_task(self, campaign_id: int) -> None:
    # Re-queues itself instead of sleeping, so a long campaign never pins a worker slot.
    if not _one_follower(campaign_id, self.request.id):
        return
    if not runs.campaign_follow(campaign_id=campaign_id):
        enqueue(campaign_follow_task, campaign_id, countdown=settings.CAMPAIGN_POLL_SECONDS)


def _one_follower(campaign_id: int, task_id: str) -> bool:
    """False when another follow chain of this campaign polled less than most of a poll interval ago: this one ends.

    Chains can double up (a worker restart re-queues a follow while the old chain's message survives; a second
    submit task enqueues a follow too): without this, each restart would add one more poll of the SuperLink per
    interval for the rest of the campaign. `cache.add` is atomic, and the chain that stops always leaves one that
    just polled and re-queued itself. A retry of the same task (same id, maybe at once: backoff jitter) goes on.
    (The default cache is per process: it dedupes within a worker; a shared cache, across workers.)
    """
    key = f"campaign-follow:{campaign_id}"
    return cache.add(key, task_id, timeout=0.8 * settings.CAMPAIGN_POLL_SECONDS) or cache.get(key) == task_id


@worker_ready.connect
def requeue_unfinished_campaigns(**_: object) -> None:
    """A (re)started worker picks up every unfinished campaign: submit the queued ones, follow the running ones.

    Tasks are acknowledged late, but a worker killed with SIGKILL (or a machine restart, or the embedded broker's
    queue lost with it) leaves the message it held unacknowledged in Redis, and Redis hands it out again only after
    the visibility timeout (an hour): the campaign would sit unfollowed that long. Both tasks are idempotent (only
    a queued campaign is submitted, a follow checks the run once), so one more of each does nothing twice; the
    message that comes back an hour later is one more follow of a campaign that has ended by then, a no-op.
    """
    from campaigns.models import Campaign

    try:
        unfinished = list(
            Campaign.objects.filter(status__in=[Campaign.Status.QUEUED, Campaign.Status.RUNNING]).values_list(
                "pk", "status"
            )
        )
    except Exception as exc:  # no database yet (first start before migrate): nothing can be unfinished
        log.warning("could not look for unfinished campaigns at worker start: %s", exc)
        return
    for campaign_id, status in unfinished:
        task = campaign_submit_task if status == Campaign.Status.QUEUED else campaign_follow_task
        enqueue(task, campaign_id)
    if unfinished:
        log.info("worker start: re-queued %d unfinished campaign(s)", len(unfinished))
