"""Celery tasks take ids, call one service, and retry only what can pass by itself."""

from __future__ import annotations

import httpx
from celery import shared_task
from django.conf import settings

from campaigns import services


def enqueue(task, campaign_id: int, countdown: float | None = None) -> None:
    """Send to the queue named in settings at call time (tests and deployments can each have their own)."""
    task.apply_async((campaign_id,), countdown=countdown, queue=settings.CELERY_TASK_DEFAULT_QUEUE)


# A SuperLink that is restarting or briefly unreachable; anything else is a real failure.
TRANSIENT = (httpx.TransportError, httpx.HTTPStatusError, ConnectionError, TimeoutError)


@shared_task(bind=True, autoretry_for=TRANSIENT, retry_backoff=True, retry_backoff_max=60, max_retries=20)
def campaign_submit_task(self, campaign_id: int) -> None:
    try:
        services.campaign_submit(campaign_id=campaign_id)
    except TRANSIENT:
        raise
    except Exception as exc:  # a run the SuperLink refuses will not start on retry: say why
        from campaigns.models import Campaign

        campaign = Campaign.objects.filter(pk=campaign_id).first()
        if campaign is not None:
            services.campaign_fail(campaign=campaign, reason=f"could not submit to the SuperLink: {exc}")
        return
    enqueue(campaign_follow_task, campaign_id, countdown=settings.CAMPAIGN_POLL_SECONDS)


@shared_task(bind=True, autoretry_for=TRANSIENT, retry_backoff=True, retry_backoff_max=60, max_retries=50)
def campaign_follow_task(self, campaign_id: int) -> None:
    # Re-queues itself instead of sleeping, so a long campaign never pins a worker slot.
    if not services.campaign_follow(campaign_id=campaign_id):
        enqueue(campaign_follow_task, campaign_id, countdown=settings.CAMPAIGN_POLL_SECONDS)
