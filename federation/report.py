"""How the ServerApp tells the platform about progress: HTTPS/HTTP POSTs to the site.

The ServerApp runs wherever the SuperLink runs; the site is the one address every part of the
platform can already reach, so reporting over HTTP works whether web, worker and SuperLink share a
host or not. Every event is also appended to a journal in the run's output directory, so nothing
is lost if the site is briefly unreachable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import requests

log = logging.getLogger(__name__)


class Reporter:
    def __init__(self, url: str, token: str, journal_dir: Path, retries: int = 5, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.journal = journal_dir / "events.jsonl"
        self.retries = retries
        self.timeout = timeout
        journal_dir.mkdir(parents=True, exist_ok=True)

    def event(self, kind: str, **payload: Any) -> None:
        body = {"type": kind, "time": time.time(), **payload}
        with self.journal.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(body) + "\n")
        self._send("POST", f"{self.url}/events", data=json.dumps(body).encode(), content_type="application/json")

    def upload(self, round_num: int, path: Path) -> None:
        data = path.read_bytes()  # adapters are a few MB
        self._send(
            "PUT",
            f"{self.url}/rounds/{round_num}/files/{path.name}",
            data=data,
            content_type="application/octet-stream",
            extra={"X-Content-SHA256": hashlib.sha256(data).hexdigest()},
        )

    def _send(self, method: str, url: str, data: bytes, content_type: str, extra: dict | None = None) -> None:
        if not self.url:
            return
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": content_type, **(extra or {})}
        for attempt in range(1, self.retries + 1):
            try:
                response = requests.request(method, url, data=data, headers=headers, timeout=self.timeout)
                if response.status_code < 500:
                    if response.status_code >= 400:
                        log.error(
                            "platform refused %s %s: %s %s", method, url, response.status_code, response.text[:200]
                        )
                    return
            except requests.RequestException as exc:
                log.warning("platform unreachable (%s), attempt %d/%d", exc, attempt, self.retries)
            time.sleep(min(2**attempt, 30))
        log.error("gave up reporting to %s after %d attempts; see %s", url, self.retries, self.journal)
