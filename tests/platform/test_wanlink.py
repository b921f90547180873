"""The shaped home link of the multi-host test (tests/platform/wanlink.py): its timing rules, without devices."""

from __future__ import annotations

import random

from wanlink import Direction

FRAME = b"x" * 1500  # 12,000 bits: 0.6 ms at 20 Mbit/s


def direction(**overrides: float) -> Direction:
    settings = {"mbit": 20.0, "delay_ms": 60.0, "jitter_ms": 10.0, "loss": 0.0, "queue_ms": 500.0} | overrides
    return Direction(rng=random.Random(7), **settings)


def test_frames_leave_in_order_after_the_delay_and_at_the_links_rate():
    link = direction()
    for _ in range(100):
        link.take(FRAME, now=0.0)
    releases = [t for t, _ in link.pending]
    assert releases == sorted(releases)  # jitter never reorders
    assert 0.05 + 0.0006 <= releases[0] <= 0.07 + 0.0006  # 60 ± 10 ms after its own serialisation
    # 100 frames take 60 ms to serialise at 20 Mbit/s: the last one leaves no earlier than that plus the delay.
    assert releases[-1] >= 0.06 + 0.05
    assert link.due(0.049) == [] and len(link.due(1.0)) == 100


def test_loss_drops_that_share_of_frames():
    link = direction(loss=0.1, mbit=1000.0)
    for i in range(5000):
        link.take(FRAME, now=i * 0.01)
    assert 400 < link.dropped < 600
    assert len(link.pending) == 5000 - link.dropped


def test_a_full_queue_drops_what_would_wait_longer_than_its_limit():
    link = direction(queue_ms=30.0)  # 50 frames of 0.6 ms fit in 30 ms
    for _ in range(200):
        link.take(FRAME, now=0.0)
    assert 49 <= len(link.pending) <= 52 and link.dropped == 200 - len(link.pending)
