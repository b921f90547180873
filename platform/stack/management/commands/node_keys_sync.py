"""`python manage.py node_keys_sync`: after a SuperLink started outside `make serve` (e.g. its own container)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from community.services import node_keys_sync


class Command(BaseCommand):
    help = (
        "Register every active node's key with the SuperLink (SUPERLINK_ADDRESS) and unregister keys the platform "
        "did not admit. `make serve` does this itself after every SuperLink start."
    )

    def handle(self, *args, **opts):
        result = node_keys_sync()
        self.stdout.write(
            f"registered {len(result.registered)}, renumbered {len(result.renumbered)}, "
            f"unadmitted and unregistered {len(result.unadmitted)}, refused {len(result.failed)}"
        )
