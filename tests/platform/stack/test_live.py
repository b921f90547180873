"""The CLI follower's round table (make demo): a node that validated after training only shows no loss before."""

from __future__ import annotations

import pytest
from rich.console import Console

from campaigns.models import BaseCheckpoint, Campaign, Participation, Round
from community.models import Node
from stack.live import _round_table

pytestmark = pytest.mark.django_db


def test_a_missing_validation_loss_before_shows_as_a_dash_beside_the_loss_after(tmp_path):
    base = BaseCheckpoint.objects.create(name="b", hf_id="org/b", path=str(tmp_path))
    campaign = Campaign.objects.create(name="c", base_model=base, data_task="t", heldout_path="h", num_rounds=1)
    round_ = Round.objects.create(campaign=campaign, number=1, eval_loss=2.0, eval_perplexity=7.4)
    for name, before in (("after-only", None), ("both", 1.5)):
        Participation.objects.create(
            round=round_, node=Node.objects.create(name=name), samples=4, tokens=40, train_loss=1.2,
            val_loss_before=before, val_loss_after=0.9, seconds=3.0,
        )  # fmt: skip
    console = Console(width=200, record=True)
    console.print(_round_table(round_))
    text = console.export_text()
    assert "-→0.900" in text and "1.500→0.900" in text
