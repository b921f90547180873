"""Reads for the contributor's own page and for a node's heartbeat answer."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db.models import Sum
from django.utils import timezone

from campaigns.models import Participation
from community.models import Contributor, Node
from releases.models import Release

log = logging.getLogger(__name__)

_ONLINE_IDS_KEY = "superlink:online-node-ids"
_UNKNOWN = "unknown"  # cached instead of the id list when the SuperLink did not answer


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


def superlink_online_node_ids() -> set[int] | None:
    """Ids the SuperLink sees online (ListNodes), or None when it cannot be asked.

    Cached for SUPERLINK_PRESENCE_CACHE_SECONDS: every node's heartbeat reads this, and one ListNodes answers them
    all. A failure is cached too (half as long), so a down SuperLink is not dialled once per heartbeat.
    """
    cached = cache.get(_ONLINE_IDS_KEY)
    if cached == _UNKNOWN:
        return None
    if cached is not None:
        return set(cached)
    from bayanihan_site.superlink import superlink_client
    from federation.control import online_node_ids

    ttl = settings.SUPERLINK_PRESENCE_CACHE_SECONDS
    try:
        ids = online_node_ids(superlink_client())
    except Exception as exc:  # noqa: BLE001 - any transport or protocol failure means "cannot tell"
        log.warning("cannot ask the SuperLink which nodes are online: %s", exc)
        cache.set(_ONLINE_IDS_KEY, _UNKNOWN, timeout=max(1, ttl // 2))
        return None
    cache.set(_ONLINE_IDS_KEY, sorted(ids), timeout=ttl)
    return ids


def node_superlink_presence(node: Node) -> str:
    """What the SuperLink sees for this node: "online", "offline", or "unknown" (SuperLink not answering)."""
    online = superlink_online_node_ids()
    if online is None or not node.flwr_node_id:
        return "unknown"
    return "online" if int(node.flwr_node_id) in online else "offline"
