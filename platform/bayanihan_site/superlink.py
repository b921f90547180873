"""The platform's Control API client for its SuperLink: infrastructure every app may use (community registers node
keys, campaigns submit runs), so it lives below them all rather than in one of them."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from federation import control


def superlink_client() -> Any:
    """TLS, trusting SUPERLINK_ROOT_CERT; the loopback Control address (SUPERLINK_ADDRESS)."""
    return control.client(settings.SUPERLINK_ADDRESS, settings.SUPERLINK_ROOT_CERT)
