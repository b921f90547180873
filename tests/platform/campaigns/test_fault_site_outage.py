"""Fault: the web server restarting mid-round, seen from the ServerApp. The site here is Django's
live_server thread (it cannot be restarted), so the restart happens between the ServerApp and the site: the
SuperLink's BAYANIHAN_SITE_URL names a FaultProxy (tests/platform/faults.py) with two Outages: one takes round 1's
report through to the site, loses the answer, then drops every connection for a while; the other does the same to
round 2's first adapter upload. The ServerApp's Reporter retries (federation/report.py): every round's event is on
record once, each adapter file arrived and hashes to what the event declared, the campaign completes in one attempt,
and nothing is left."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from django.conf import settings
from faults import FaultProxy, Outage, assert_no_process_left, round_numbers_problems

from campaigns.models import Campaign
from federation.artifacts import ADAPTER_FILES, ROUND_FILES

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

OUTAGE_SECONDS = 12.0  # the Reporter's back-off (1, 2, 4, 8 s) gets through at ≈ 15 s


class SiteFront:
    """Puts a FaultProxy between the ServerApps and the site (see the `site_front` fixture in conftest)."""

    proxy: FaultProxy | None = None
    outages: tuple[Outage, ...] = ()

    def __call__(self, url: str) -> str:
        self.proxy = FaultProxy(url, lifetime=900).start()
        self.outages = (
            # Events go `started`, round 0, round 1, ...: the third POST is round 1's report.
            self.proxy.add_outage(Outage(r"/events$", seconds=OUTAGE_SECONDS, skip=2, method="POST")),
            # Uploads follow their round's event (the site takes only declared bytes): round 2's first file.
            self.proxy.add_outage(Outage(r"/rounds/2/files/", seconds=OUTAGE_SECONDS, method="PUT")),
        )
        return self.proxy.url


@pytest.fixture
def site_front():
    front = SiteFront()
    yield front
    if front.proxy is not None:
        front.proxy.stop()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_no_round_report_or_adapter_upload_is_lost_while_the_web_server_restarts(live_platform, site_front, tmp_path):
    campaign = live_platform.run_campaign(
        "web restart",
        timeout=600,
        train_config={"local-steps": 2, "seq-len": 32, "batch-size": 2, "threads": 1},
        num_rounds=2,
        min_nodes=2,
        round_timeout=120,
    )
    proxy = site_front.proxy
    assert all(o.started is not None for o in site_front.outages), "an outage never started (its request never came)"
    assert campaign.status == Campaign.Status.COMPLETED, campaign.status_reason

    # The outages were real: the report and the upload (done, answers lost) and the requests after them got no
    # answer, and each was sent again and answered once the site was back.
    exchanges = list(proxy.exchanges)
    dropped = [i for i, e in enumerate(exchanges) if e.injected]
    assert len(dropped) >= 2 and any(exchanges[i].method == "PUT" for i in dropped), [exchanges[i] for i in dropped]
    for i in dropped:
        lost = exchanges[i]
        assert any(
            e.method == lost.method and e.path == lost.path and not e.injected and 200 <= e.status < 300
            for e in exchanges[i + 1 :]
        ), f"{lost.method} {lost.path} was never answered after the outage"

    # One attempt: the outage cost the run nothing (it waited, it did not fail).
    assert list(campaign.attempts.values_list("number", "outcome")) == [(1, "completed")]
    numbers = list(campaign.rounds.order_by("number").values_list("number", flat=True))
    assert round_numbers_problems(numbers, expected_last=2) == []

    # Each round's event as the ServerApp sent it (its journal) is the one on record, once; its files arrived whole.
    out = Path(settings.DATA_DIR) / "campaigns" / str(campaign.pk)
    journal = [json.loads(line) for line in (out / "server" / "events.jsonl").read_text().splitlines()]
    sent = [e for e in journal if e["type"] == "round"]
    assert [e["round"] for e in sent] == [0, 1, 2]  # the Reporter resends the same bytes, never a new event
    for event in sent:
        round_ = campaign.rounds.get(number=event["round"])
        assert round_.declared_files == round_.adapter_files == event["adapter_files"]
        # The adapter, and from round 1 on the server optimizer's state (the default campaign has momentum).
        assert set(ADAPTER_FILES) <= set(round_.adapter_files) <= set(ROUND_FILES)
        for name, digest in round_.adapter_files.items():
            assert sha256(out / f"round-{round_.number}" / name) == digest, f"round {round_.number}'s {name}"
        assert not list((out / f"round-{round_.number}").glob(".*.partial")), "an upload left a partial file"
    assert campaign.release is not None

    live_platform.stack.stop()
    assert_no_process_left(tmp_path)
