"""Launching queues exactly one Celery task after commit; only drafts launch; bad config is explained."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from campaigns.models import BaseCheckpoint, Campaign
from campaigns.services.actions import campaign_launch
from campaigns.services.runs import campaign_submit
from campaigns.services.setup import campaign_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def base(tmp_path) -> BaseCheckpoint:
    return BaseCheckpoint.objects.create(name="b", hf_id="org/b", path=str(tmp_path))


@pytest.fixture
def heldout(tmp_path):
    path = tmp_path / "heldout.jsonl"
    path.write_text('{"text": "x"}\n')
    return str(path)


def test_launch_queues_the_submit_task_on_commit(base, heldout, django_capture_on_commit_callbacks, monkeypatch):
    from campaigns import tasks

    queued = []
    monkeypatch.setattr(
        tasks, "enqueue", lambda task, campaign_id, countdown=None: queued.append((task.name, campaign_id))
    )
    campaign = campaign_create(name="c", base_model=base, data_task="t", heldout_path=heldout)
    with django_capture_on_commit_callbacks(execute=True):
        campaign_launch(campaign=campaign)
    assert queued == [("campaigns.tasks.campaign_submit_task", campaign.pk)]
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.QUEUED and campaign.launched_at


def test_only_a_draft_can_be_launched(base, heldout, django_capture_on_commit_callbacks):
    campaign = campaign_create(name="c", base_model=base, data_task="t", heldout_path=heldout)
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.RUNNING)
    with pytest.raises(ValidationError, match="only a draft"):
        campaign_launch(campaign=campaign)


def test_submit_skips_a_campaign_that_is_not_queued(base, heldout):
    campaign = campaign_create(name="c", base_model=base, data_task="t", heldout_path=heldout)
    assert campaign_submit(campaign_id=campaign.pk) is False  # still a draft: nothing is sent
    assert campaign_submit(campaign_id=10**9) is False  # gone: nothing to do


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"train_config": {"lora-r": 0}}, "train_config"), ({"num_rounds": 0}, "num_rounds"),
     ({"heldout_path": "/nope.jsonl"}, "heldout_path"), ({"round_timeout": 5}, "round_timeout"),
     ({"nodes_per_round": -1}, "nodes_per_round"),
     ({"round_timeout": 8 * 24 * 3600}, "round_timeout")],
)  # fmt: skip
def test_bad_campaign_settings_name_the_field(base, heldout, kwargs, field):
    args = {"name": "c", "base_model": base, "data_task": "t", "heldout_path": heldout, **kwargs}
    with pytest.raises(ValidationError) as err:
        campaign_create(**args)
    assert field in err.value.message_dict
