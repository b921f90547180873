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
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from federation.artifacts import ADAPTER_FILES, CONTENT_SHA256_HEADER, SERVER_STATE
from federation.config import ServerPaths

log = logging.getLogger(__name__)


LINK_SECRET_ENV = "BAYANIHAN_LINK_SECRET_FILE"
SITE_URL_ENV = "BAYANIHAN_SITE_URL"
RUN_ID_HEADER = "X-Flower-Run-Id"
# A SuperLink without a site (bench/flower_cluster.py): a folder on its host with one paths file per campaign id.
LOCAL_PATHS_ENV = "BAYANIHAN_SERVER_PATHS_DIR"


@dataclass(frozen=True)
class SiteLink:
    """The ServerApp's way to the site: URL and link secret, from the environment of the SuperLink that started it.

    Never from the run config: every node receives that. The site checks the secret (by hash), that the campaign is
    running and that the run id is the campaign's current Flower run.
    """

    site_url: str
    secret: str
    local_dir: str = ""  # no site (benchmarks): paths from <local_dir>/<campaign-id>.json, reports journalled only

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SiteLink:
        env = os.environ if environ is None else environ
        url, path = env.get(SITE_URL_ENV, ""), env.get(LINK_SECRET_ENV, "")
        if not url and env.get(LOCAL_PATHS_ENV):
            return cls("", "", env[LOCAL_PATHS_ENV])
        if not url or not path:
            raise RuntimeError(
                f"{SITE_URL_ENV} and {LINK_SECRET_ENV} must be set in the environment of flower-superlink "
                "(the platform's Stack does it): the ServerApp gets its server config and report credential there"
            )
        try:
            secret = Path(path).read_text().strip()
        except OSError as exc:
            raise RuntimeError(f"cannot read the link secret {path} ({LINK_SECRET_ENV}): {exc}") from exc
        if not secret:
            raise RuntimeError(f"the link secret file {path} ({LINK_SECRET_ENV}) is empty")
        return cls(url.rstrip("/"), secret)

    def campaign_url(self, campaign_id: int) -> str:
        """The campaign's API base; empty without a site (the Reporter then only journals)."""
        return f"{self.site_url}/api/v1/campaigns/{campaign_id}" if self.site_url else ""

    def headers(self, run_id: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}", RUN_ID_HEADER: str(run_id)}

    def server_paths(self, campaign_id: int, run_id: int, wait: float = 600.0) -> ServerPaths:
        """GET the campaign's server config. Waits while the site is unreachable or says the run is not its
        campaign's yet (503: the platform records the run id right after StartRun returns); refusals raise."""
        if not self.site_url:
            local = Path(self.local_dir) / f"{campaign_id}.json"
            return ServerPaths.from_json(json.loads(local.read_text()))
        url = f"{self.campaign_url(campaign_id)}/server-config"
        deadline, delay = time.monotonic() + wait, 1.0
        while True:
            try:
                response = requests.get(url, headers=self.headers(run_id), timeout=30)
                if response.status_code == 200:
                    return ServerPaths.from_json(response.json())
                if response.status_code < 500:
                    raise RuntimeError(
                        f"the site refused the server config ({response.status_code}): {response.text[:200]}"
                    )
                problem = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                problem = str(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no server config from {url} within {wait:.0f}s: {problem}")
            log.warning("server config not available yet (%s); retrying", problem)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


# How long a report is retried while the site answers 5xx or not at all: a web restart (or a deploy) must lose
# nothing, and the ServerApp has nothing better to do than wait (its rounds are only useful once recorded).
PATIENCE_SECONDS = 600.0
MAX_WAIT_SECONDS = 30.0


class SiteUnavailable(ConnectionError):
    """The site did not answer (or answered 5xx) for longer than the Reporter's patience."""


class Reporter:
    def __init__(
        self,
        url: str,
        token: str,
        journal_dir: Path,
        patience: float = PATIENCE_SECONDS,
        timeout: float = 30.0,
        run_id: int = 0,
    ) -> None:
        """`url` is the campaign's API base (SiteLink.campaign_url), `token` the link secret, `run_id` this run."""
        self.url = url.rstrip("/")
        self.token = token
        self.run_id = run_id
        self.journal = journal_dir / "events.jsonl"
        self.patience = patience
        self.timeout = timeout
        # The ServerApp reports rounds from its evaluator thread and started/finished/failed from its own; one
        # journal line at a time (requests itself is per call and needs no lock).
        self._journal_lock = threading.Lock()
        journal_dir.mkdir(parents=True, exist_ok=True)

    def event(self, event_type: str, /, **payload: Any) -> None:
        """Journal and send one event (`event_type`: events.EVENT_*). Positional-only, so a payload may carry any
        field name: the `failed` event's `kind` once collided with this parameter, and the report never went out."""
        body = {"type": event_type, "time": time.time(), **payload}
        with self._journal_lock, self.journal.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(body) + "\n")
        # The same bytes on every retry: the site recognises a resent event (same content) and records it once.
        self._send("POST", f"{self.url}/events", data=json.dumps(body).encode(), content_type="application/json")

    def upload(self, round_num: int, path: Path) -> None:
        data = path.read_bytes()  # adapters are a few MB
        self._send(
            "PUT",
            f"{self.url}/rounds/{round_num}/files/{path.name}",
            data=data,
            content_type="application/octet-stream",
            extra={CONTENT_SHA256_HEADER: hashlib.sha256(data).hexdigest()},
        )

    def download_round(self, round_num: int, folder: Path) -> Path:
        """Fetch a merged round's files from the site into `folder` (resuming a campaign from that round).

        From the site rather than a local path, so it works when the SuperLink and the site are on different hosts.
        Each file must hash to the sha256 the site recorded for it (X-Content-SHA256). The adapter files must be
        there; the server optimizer's state (SERVER_STATE) is fetched when the round lists it: the site answers 404
        for a round that has none (no optimizer state, or a round recorded before it was kept), and then the folder
        simply holds no such file.
        """
        folder.mkdir(parents=True, exist_ok=True)
        for name in (*ADAPTER_FILES, SERVER_STATE):
            response = self._request("GET", f"{self.url}/rounds/{round_num}/files/{name}")
            if response is None:
                raise SiteUnavailable(f"round {round_num}'s {name}: the site did not answer within {self.patience}s")
            if name == SERVER_STATE and response.status_code == 404:
                continue
            if response.status_code != 200:
                raise RuntimeError(
                    f"round {round_num}'s {name}: the site answered {response.status_code}: {response.text[:200]}"
                )
            expected = response.headers.get(CONTENT_SHA256_HEADER, "")
            if hashlib.sha256(response.content).hexdigest() != expected:
                raise RuntimeError(f"round {round_num}'s {name}: content does not match its recorded sha256")
            (folder / name).write_bytes(response.content)
        return folder

    def _send(self, method: str, url: str, data: bytes, content_type: str, extra: dict | None = None) -> None:
        if not self.url:
            return
        response = self._request(method, url, data=data, extra={"Content-Type": content_type, **(extra or {})})
        if response is None:
            log.error("gave up reporting to %s after %.0fs; see %s", url, self.patience, self.journal)
        elif response.status_code >= 400:
            log.error("platform refused %s %s: %s %s", method, url, response.status_code, response.text[:200])

    def _request(
        self, method: str, url: str, data: bytes | None = None, extra: dict | None = None
    ) -> requests.Response | None:
        """One request, repeated with backoff while the site is unreachable or answers 5xx, for up to `patience`
        seconds; the last answer below 500, or None when patience ran out."""
        headers = {"Authorization": f"Bearer {self.token}", RUN_ID_HEADER: str(self.run_id), **(extra or {})}
        deadline = time.monotonic() + self.patience
        wait, attempt = 1.0, 0
        while True:
            attempt += 1
            try:
                response = requests.request(method, url, data=data, headers=headers, timeout=self.timeout)
                if response.status_code < 500:
                    return response
                problem = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                problem = str(exc)
            if time.monotonic() + wait > deadline:
                return None
            log.warning("site unavailable for %s %s (%s), attempt %d; retrying in %.0fs", method, url, problem,
                        attempt, wait)  # fmt: skip
            time.sleep(wait)
            wait = min(wait * 2, MAX_WAIT_SECONDS)
