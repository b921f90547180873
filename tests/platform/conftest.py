"""Fixtures that run the real platform around a test: SuperLink, SuperNodes, Celery worker, live web."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.db import InterfaceError, OperationalError, connection
from django.db import connections as db_connections

from federation import procs


def database_url() -> str:
    """The test database as a URL, for the worker process (it must see what the test sees)."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = f"{s['USER']}:{s['PASSWORD']}@" if s.get("PASSWORD") else (f"{s['USER']}@" if s.get("USER") else "")
    host = f"{s.get('HOST') or 'localhost'}:{s.get('PORT') or 5432}"
    return f"postgres://{auth}{host}/{s['NAME']}"


@dataclass
class LivePlatform:
    stack: object
    superlink: str
    site_url: str
    corpus: Path
    model: Path
    public: str = ""  # the proxy nodes dial (only the Fleet API and /health get through)

    def run_campaign(self, name: str, timeout: float = 300, **options: Any) -> Any:
        """Create and launch a campaign on the tiny model and held-out split; return it once it has ended."""
        from campaigns.services.actions import campaign_launch
        from campaigns.services.setup import base_model_register, campaign_create

        base = base_model_register(path=self.model, name="tiny", hf_id="test/tiny-llama")
        campaign = campaign_create(
            name=name,
            base_model=base,
            data_task="python-docs",
            heldout_path=str(self.corpus / "heldout.jsonl"),
            **options,
        )
        campaign_launch(campaign=campaign)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.stack.revive()  # as `make serve` does: a dead SuperLink, proxy or worker is restarted
            self.stack.check()  # a crashed node fails the test with its log tail
            try:
                campaign.refresh_from_db()
            except (OperationalError, InterfaceError):
                # The database restarted under this process too (test_fault_postgres_restart): drop this thread's
                # dead connection; the next poll opens a new one.
                db_connections.close_all()
                time.sleep(1)
                continue
            if campaign.is_terminal:
                return campaign
            time.sleep(1)
        rounds = sorted(campaign.rounds.exclude(eval_loss=None).values_list("number", flat=True))
        raise AssertionError(f"campaign still {campaign.status} after {timeout}s; rounds seen {rounds}")


@pytest.fixture
def superlink_front():
    """Called with (the SuperLink address nodes would dial, its TLS files) once the SuperLink runs; returns the
    address nodes dial instead, or None for the SuperLink's own. A test module overrides this fixture to put
    something between nodes and the SuperLink (tests/platform/faults.py's FaultProxy answering 500s)."""
    return lambda address, tls: None


@pytest.fixture
def site_front():
    """Called with the site's URL before the SuperLink starts; returns the URL its ServerApps report to instead (the
    SuperLink's BAYANIHAN_SITE_URL), or None for the site itself. A test module overrides this fixture to put
    something between the ServerApp and the site (a FaultProxy whose Outage plays a web server restarting): the
    site here is Django's live_server thread, which cannot itself be restarted."""
    return lambda url: None


@pytest.fixture
def live_platform(
    live_server, tiny_checkpoint, tiny_corpus, tmp_path, settings, superlink_front, site_front
) -> Iterator[LivePlatform]:
    from stack.local_nodes import start_local_nodes
    from stack.runner import running_platform

    var = tmp_path / "var"
    settings.DATA_DIR = var / "data"
    superlink = f"127.0.0.1:{procs.free_port()}"
    # Nodes dial the proxy, as in production: the SuperLink itself is on loopback for the platform only.
    public = f"127.0.0.1:{procs.free_port()}"
    settings.SUPERLINK_ADDRESS, settings.SUPERLINK_PUBLIC_ADDRESS = superlink, public
    settings.SUPERLINK_TLS_DIR = var / "superlink-tls"
    settings.SUPERLINK_ROOT_CERT = str(var / "superlink-tls" / "ca.crt")
    settings.LINK_SECRET_FILE = var / "keys" / "link-secret"
    settings.SITE_URL = live_server.url
    settings.CAMPAIGN_POLL_SECONDS = 1
    queue = f"test-{uuid.uuid4().hex[:8]}"  # never shared with another worker on the same Redis
    settings.CELERY_TASK_DEFAULT_QUEUE = queue
    env = dict(
        DATABASE_URL=database_url(),
        BAYANIHAN_VAR=str(var),
        CELERY_QUEUE=queue,
        SUPERLINK_ADDRESS=superlink,
        SUPERLINK_PUBLIC_ADDRESS=public,
        LINK_SECRET_FILE=str(var / "keys" / "link-secret"),
        SUPERLINK_TLS_DIR=str(var / "superlink-tls"),
        SITE_URL=live_server.url,
        CAMPAIGN_POLL_SECONDS="1",
    )
    # The web is Django's live_server thread here; the broker is this test's until the end (Broker.close undoes
    # its activation), and pytest handles signals itself.
    with running_platform(
        tmp_path / "stack",
        superlink=superlink,
        public=public,
        site_url=live_server.url,
        report_url=site_front(live_server.url),
        env=env,
        broker_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        broker_dir=var / "redis",
        stop_signals=False,
    ) as up:
        front = superlink_front(public, up.tls)  # a fault proxy between the nodes and the platform's Caddy
        if front:
            settings.SUPERLINK_PUBLIC_ADDRESS = front  # what enrollment tells the nodes to dial
        # After the front is in place (not running_platform's `nodes`): enrollment tells them the front's address.
        start_local_nodes(up.stack, ["node-1", "node-2"], live_server.url, tiny_corpus, tiny_checkpoint)
        yield LivePlatform(up.stack, superlink, live_server.url, tiny_corpus, tiny_checkpoint, public)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """Rate limits (logins, sign-ups, heartbeats) live in the cache: each test starts with none counted."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()
