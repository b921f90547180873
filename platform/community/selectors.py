"""Reads for a node's heartbeat answer: what the SuperLink sees of it.

A contributor's own page reads campaigns and releases too, so it lives above them (`console.selectors`).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.cache import cache

from community.models import Node

log = logging.getLogger(__name__)

_ONLINE_IDS_KEY = "superlink:online-node-ids"
_UNKNOWN = "unknown"  # cached instead of the id list when the SuperLink did not answer


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
