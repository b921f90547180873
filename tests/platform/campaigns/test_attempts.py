"""Attempts: each Flower run of a campaign; an infrastructure failure resumes from the last merged round (bounded),
a training failure ends the campaign with its reason; the site serves merged rounds to the resuming ServerApp."""

from __future__ import annotations

import hashlib

import pytest

from campaigns.models import BaseCheckpoint, Campaign, CampaignAttempt, Round
from campaigns.services.reports import report_failure
from campaigns.services.runs import campaign_resume_point, campaign_run_failed, last_merged_round
from campaigns.services.setup import campaign_output_dir
from console.models import AuditEntry
from federation import events
from federation.artifacts import ADAPTER_FILES
from federation.report import Reporter
from releases.provenance import campaign_provenance

pytestmark = pytest.mark.django_db
TOKEN = "s3cret-token"


@pytest.fixture
def campaign(tmp_path, settings) -> Campaign:
    settings.DATA_DIR = tmp_path / "data"
    settings.LINK_SECRET_FILE, settings.LINK_SECRET_SHA256 = tmp_path / "link-secret", ""
    settings.LINK_SECRET_FILE.write_text(TOKEN + "\n")  # the ServerApp's credential (the link secret)
    base = BaseCheckpoint.objects.create(name="b", hf_id="org/b", path=str(tmp_path))
    campaign = Campaign.objects.create(
        name="c", base_model=base, data_task="t", heldout_path="h", num_rounds=3, auto_publish=False,
        status=Campaign.Status.RUNNING, flwr_run_id="7",
    )  # fmt: skip
    CampaignAttempt.objects.create(campaign=campaign, number=1, flwr_run_id="7", outcome="running")
    return campaign


def merged(campaign: Campaign, *numbers: int) -> None:
    """Rounds on record with their merged adapter files stored under the campaign's output folder."""
    for n in numbers:
        folder = campaign_output_dir(campaign) / f"round-{n}"
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for name in ADAPTER_FILES:
            data = f"{name} of round {n}".encode()
            (folder / name).write_bytes(data)
            files[name] = hashlib.sha256(data).hexdigest()
        Round.objects.create(campaign=campaign, number=n, eval_loss=2.0 - n / 10, participants=1, adapter_files=files)


def fail_run(campaign: Campaign, django_capture_on_commit_callbacks, sub_status: str = "failed") -> list:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        campaign_run_failed(campaign_id=campaign.pk, run_id=campaign.flwr_run_id, sub_status=sub_status, details="x")
    campaign.refresh_from_db()
    return callbacks


def test_the_last_merged_round_is_the_end_of_the_contiguous_run_from_round_0(campaign):
    assert last_merged_round(campaign) is None
    merged(campaign, 1, 2)
    assert last_merged_round(campaign) is None  # no round 0: nothing to continue from
    merged(campaign, 0)
    Round.objects.create(campaign=campaign, number=3, eval_loss=1.0)  # reported, but its files never arrived
    assert last_merged_round(campaign) == 2


def test_the_resume_point_drops_the_partial_round_after_it_with_its_files(campaign):
    merged(campaign, 0, 1)
    Round.objects.create(campaign=campaign, number=2, eval_loss=1.0)
    partial = campaign_output_dir(campaign) / "round-2"
    partial.mkdir(parents=True)
    (partial / "adapter_config.json").write_text("{}")
    assert campaign_resume_point(campaign=campaign) == 1
    assert sorted(campaign.rounds.values_list("number", flat=True)) == [0, 1]
    assert not partial.exists()
    assert (campaign_output_dir(campaign) / "round-1" / "adapter_model.safetensors").is_file()


def test_an_infrastructure_failure_queues_a_new_attempt_from_the_last_merged_round(
    campaign, django_capture_on_commit_callbacks
):
    merged(campaign, 0, 1)
    callbacks = fail_run(campaign, django_capture_on_commit_callbacks)
    assert campaign.status == Campaign.Status.QUEUED and campaign.flwr_run_id == ""
    assert len(callbacks) == 1  # the submit task, queued once the transaction commits
    first, second = campaign.attempts.order_by("number")
    assert (first.outcome, first.failure_kind) == ("failed", "infrastructure")
    assert first.reason == "Flower run 7 ended failed: x" and first.ended_at is not None
    assert (second.number, second.trigger, second.outcome) == (2, "auto-resume", "queued")
    ended = AuditEntry.objects.get(action="campaign.attempt-end")
    assert ended.actor_name == "platform" and ended.detail["kind"] == "infrastructure"
    assert campaign_resume_point(campaign=campaign) == 1


def test_attempts_are_bounded_by_max_attempts(campaign, django_capture_on_commit_callbacks):
    campaign.max_attempts = 2
    campaign.save()
    merged(campaign, 0)
    fail_run(campaign, django_capture_on_commit_callbacks)
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.RUNNING, flwr_run_id="8")
    campaign.attempts.filter(number=2).update(flwr_run_id="8", outcome="running")
    campaign.refresh_from_db()
    callbacks = fail_run(campaign, django_capture_on_commit_callbacks)
    assert campaign.status == Campaign.Status.FAILED and not callbacks
    assert campaign.status_reason == "Flower run 8 ended failed: x; gave up after 2 attempts (max_attempts)"
    assert list(campaign.attempts.values_list("outcome", flat=True)) == ["failed", "failed"]


def test_a_training_failure_the_serverapp_reported_fails_the_campaign_without_resuming(
    campaign, django_capture_on_commit_callbacks
):
    merged(campaign, 0, 1)
    failed = {"type": events.EVENT_FAILED, "kind": events.FAILURE_TRAINING, "reason": "ValueError: lr"}
    report_failure(campaign=campaign, event=failed)
    callbacks = fail_run(campaign, django_capture_on_commit_callbacks)
    assert campaign.status == Campaign.Status.FAILED and not callbacks
    assert campaign.status_reason == "training failed: ValueError: lr"
    attempt = campaign.attempts.get()
    assert (attempt.outcome, attempt.failure_kind) == ("failed", "training")


def test_a_run_stopped_outside_the_platform_is_not_resumed(campaign, django_capture_on_commit_callbacks):
    callbacks = fail_run(campaign, django_capture_on_commit_callbacks, sub_status="stopped")
    assert campaign.status == Campaign.Status.FAILED and not callbacks


def test_a_run_that_died_after_reporting_every_round_completes_the_campaign(
    campaign, django_capture_on_commit_callbacks
):
    merged(campaign, 0, 1, 2, 3)
    fail_run(campaign, django_capture_on_commit_callbacks)
    assert campaign.status == Campaign.Status.COMPLETED


def test_a_second_follow_of_the_same_failed_run_changes_nothing(campaign, django_capture_on_commit_callbacks):
    merged(campaign, 0)
    fail_run(campaign, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        campaign_run_failed(campaign_id=campaign.pk, run_id="7", sub_status="failed")
    assert not callbacks and campaign.attempts.count() == 2


def get_file(client, campaign, number, name, token=TOKEN):
    return client.get(
        f"/api/v1/campaigns/{campaign.pk}/rounds/{number}/files/{name}",
        headers={"Authorization": f"Bearer {token}", "X-Flower-Run-Id": campaign.flwr_run_id},
    )


def test_the_resuming_serverapp_downloads_a_merged_round_with_its_recorded_sha256(client, campaign):
    merged(campaign, 0, 1)
    response = get_file(client, campaign, 1, "adapter_model.safetensors")
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert body == b"adapter_model.safetensors of round 1"
    assert response["X-Content-SHA256"] == hashlib.sha256(body).hexdigest()
    assert get_file(client, campaign, 2, "adapter_model.safetensors").status_code == 404
    assert get_file(client, campaign, 1, "../../secret_key").status_code == 404
    assert get_file(client, campaign, 1, "adapter_model.safetensors", token="wrong").status_code == 403


def test_the_serverapps_failed_event_through_the_api_marks_the_attempt_as_a_training_failure(
    client, campaign, tmp_path
):
    """The event as the ServerApp's Reporter writes it (journalled bytes, the contract's type and kind), not a
    hand-written dict: a type or kind spelt differently on one side would be taken and ignored."""
    reporter = Reporter("", TOKEN, tmp_path / "journal")  # no URL: it only journals, the bytes it would send
    reporter.event(events.EVENT_FAILED, kind=events.FAILURE_TRAINING, reason="every update refused")
    (sent,) = reporter.journal.read_text().splitlines()
    response = client.post(
        f"/api/v1/campaigns/{campaign.pk}/events",
        sent,
        content_type="application/json",
        headers={"Authorization": f"Bearer {TOKEN}", "X-Flower-Run-Id": campaign.flwr_run_id},
    )
    assert response.status_code == 200
    attempt = campaign.attempts.get()
    assert (attempt.failure_kind, attempt.reason) == ("training", "every update refused")


def test_provenance_and_the_campaign_page_list_every_attempt(
    client, campaign, django_capture_on_commit_callbacks, django_user_model
):
    merged(campaign, 0, 1)
    fail_run(campaign, django_capture_on_commit_callbacks)
    attempts = campaign_provenance(campaign, {})["attempts"]
    assert [(a["attempt"], a["trigger"], a["outcome"], a["failure_kind"]) for a in attempts] == [
        (1, "launch", "failed", "infrastructure"),
        (2, "auto-resume", "queued", None),
    ]
    assert attempts[0]["flwr_run_id"] == "7" and attempts[0]["reason"] == "Flower run 7 ended failed: x"
    client.force_login(django_user_model.objects.create_user("staffer", "s@example.org", "pw", is_staff=True))
    page = client.get(f"/console/campaigns/{campaign.pk}/").content.decode()
    assert 'id="attempts"' in page and "auto-resume" in page and "Flower run 7 ended failed: x" in page


# --- which empty rounds end a campaign ----------------------------------------------------------------------------


def test_a_round_whose_nodes_all_dropped_out_does_not_throw_the_campaign_away(campaign):
    from campaigns.services.runs import campaign_complete

    merged(campaign, 0, 1, 2, 3)
    Round.objects.filter(campaign=campaign, number=2).update(participants=0, failures=2)  # connections lost
    campaign_complete(campaign=campaign)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.COMPLETED, campaign.status_reason


def test_a_round_whose_every_update_was_refused_fails_the_campaign(campaign):
    from campaigns.services.runs import campaign_complete

    merged(campaign, 0, 1, 2, 3)
    Round.objects.filter(campaign=campaign, number=2).update(participants=0, rejected=2)  # validation refused all
    campaign_complete(campaign=campaign)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.FAILED and "every update was refused" in campaign.status_reason


def test_a_campaign_in_which_no_round_trained_fails(campaign):
    from campaigns.services.runs import campaign_complete

    merged(campaign, 0, 1, 2, 3)
    Round.objects.filter(campaign=campaign, number__gte=1).update(participants=0, failures=2)
    campaign_complete(campaign=campaign)
    campaign.refresh_from_db()
    assert (
        campaign.status == Campaign.Status.FAILED and "no round had a successful node update" in campaign.status_reason
    )
