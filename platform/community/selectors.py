"""Reads for the contributor's own page."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from campaigns.models import Participation
from community.models import Contributor
from releases.models import Release


def contributor_overview(contributor: Contributor) -> dict[str, Any]:
    online_since = timezone.now() - timedelta(seconds=settings.NODE_ONLINE_SECONDS)
    nodes = list(contributor.nodes.order_by("created_at"))
    for node in nodes:
        node.online = bool(node.last_seen and node.last_seen >= online_since and node.status == node.Status.ACTIVE)
    participations = (
        Participation.objects.filter(node__contributor=contributor, error="")
        .select_related("node", "round__campaign")
        .order_by("-round__recorded_at")
    )
    totals = participations.aggregate(samples=Sum("samples"), tokens=Sum("tokens"))
    # Yanked releases are hidden from everyone but staff, here too.
    releases = Release.objects.filter(
        campaign__rounds__participations__in=participations, yanked_at__isnull=True
    ).distinct()
    return {
        "contributor": contributor,
        "nodes": nodes,
        "participations": participations[:100],
        "rounds": participations.count(),
        "samples": totals["samples"] or 0,
        "tokens": totals["tokens"] or 0,
        "releases": releases,
    }
