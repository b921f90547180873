from __future__ import annotations

from django.core.management.base import BaseCommand

from federation.pki import certificate_fingerprint
from stack.runner import superlink_tls


class Command(BaseCommand):
    help = "Make (once) the local CA and SuperLink certificate for SUPERLINK_HOSTNAMES; print the paths."

    def handle(self, *args, **opts):
        tls = superlink_tls()
        for role, path in tls.items():
            self.stdout.write(f"{role}: {path}")
        self.stdout.write(f"CA sha256 fingerprint: {certificate_fingerprint(tls['ca'].read_bytes())}")
