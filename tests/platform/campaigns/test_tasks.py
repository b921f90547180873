"""Celery task plumbing that needs no broker: one follow chain per campaign."""

from __future__ import annotations

import time

from campaigns.tasks import _one_follower


def test_a_second_follow_chain_of_a_campaign_stops_while_the_first_goes_on(settings):
    settings.CAMPAIGN_POLL_SECONDS = 0.5
    assert _one_follower(7, "chain-a")
    assert not _one_follower(7, "chain-b")  # polled just now by chain a: chain b ends
    assert _one_follower(7, "chain-a")  # a retry of the same task (same id) goes on, even at once
    assert _one_follower(8, "chain-b")  # another campaign: its own chain
    time.sleep(0.5)
    assert _one_follower(7, "chain-b")  # chain a gone quiet for most of an interval: the next one takes over
