"""Campaign runs: submit a queued campaign to the SuperLink as a Flower run (its run config and server paths), follow
it, record each run as an attempt, resume from the last merged round after an infrastructure failure, fail, complete."""

from __future__ import annotations

import logging
import shutil
from typing import Any

from django.core.exceptions import ValidationError
from django.db import DatabaseError, transaction
from django.utils import timezone

from bayanihan_site.superlink import superlink_client
from campaigns.models import Campaign, CampaignAttempt, Round
from campaigns.services.setup import campaign_output_dir
from campaigns.signals import attempt_recorded, campaign_completing
from community.models import Node
from federation import control
from federation.artifacts import ADAPTER_FILES, round_folder
from federation.config import AggregationConfig, EvaluationConfig, ServerConfig, ServerPaths, TrainConfig, WireConfig

log = logging.getLogger(__name__)


def campaign_run_config(campaign: Campaign) -> dict[str, Any]:
    """The Flower run config of a campaign. Every node receives it (context.run_config): numbers and names only,
    never a secret or a server path — the ServerApp fetches those from the site (campaign_server_paths)."""
    start_round = campaign_resume_point(campaign=campaign)
    server = ServerConfig(
        campaign_id=campaign.pk,
        start_round=start_round,
        num_rounds=campaign.num_rounds,
        min_nodes=campaign.min_nodes,
        nodes_per_round=campaign.nodes_per_round,
        round_timeout=float(campaign.round_timeout),
    )
    return {
        **TrainConfig.from_run_config(campaign.train_config).to_run_config(),
        **AggregationConfig.from_run_config(campaign.aggregation).to_run_config(),
        **WireConfig(transfer_dtype=campaign.transfer_dtype).to_run_config(),  # both the ServerApp and nodes read it
        **EvaluationConfig.from_run_config(campaign.evaluation).to_run_config(),
        **server.to_run_config(),
    }


def campaign_server_paths(campaign: Campaign) -> ServerPaths:
    """What the ServerApp reads and writes on the SuperLink host; served only to the link secret's holder."""
    return ServerPaths(
        base_model_path=campaign.base_model.path,
        heldout_path=campaign.heldout_path,
        output_dir=str(campaign_output_dir(campaign) / "server"),
        # One vote per contributor in robust strategies: which contributor each active node belongs to (by pk;
        # the ServerApp only groups by it). Node ids change after a SuperLink restart: every run asks again.
        node_owners={
            n.flwr_node_id: str(n.contributor_id)
            for n in Node.objects.filter(status=Node.Status.ACTIVE).exclude(flwr_node_id="").exclude(contributor=None)
        },
    )


def campaign_submit(*, campaign_id: int) -> bool:
    """Submit a queued campaign as a Flower run. Safe to call twice: only a queued one is submitted."""
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().filter(pk=campaign_id).first()
        if campaign is None or campaign.status != Campaign.Status.QUEUED or campaign.flwr_run_id:
            return False
    run_config = campaign_run_config(campaign)
    start_round = int(run_config["start-round"])
    run_id = control.start_run(superlink_client(), run_config)
    try:
        with transaction.atomic():
            campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
            campaign.flwr_run_id = str(run_id)
            cancelled_meanwhile = campaign.status != Campaign.Status.QUEUED
            if not cancelled_meanwhile:
                campaign.status = Campaign.Status.RUNNING
            campaign.save(update_fields=["flwr_run_id", "status"])
            _attempt_started(campaign, run_id, start_round)
    except DatabaseError:
        # The run started but is on no record (the database went away, e.g. restarting): the task retries the
        # submit, which starts another run, so this one must not go on beside it, training for nobody.
        try:
            control.stop_run(superlink_client(), run_id)
        except Exception as exc:  # its ServerApp is refused by the site anyway (not the campaign's run id)
            log.warning("could not stop unrecorded Flower run %s: %s", run_id, exc)
        raise
    if cancelled_meanwhile:  # cancelled while we were submitting: the run must not go on
        control.stop_run(superlink_client(), run_id)
        return False
    log.info("campaign %s submitted as Flower run %s from round %s", campaign_id, run_id, start_round)
    return True


# --- attempts: one Flower run each; resuming from the last merged round --------------------------


def round_files_stored(round_: Round) -> bool:
    """The round's merged adapter is stored, and so is every other file its event declared (the server optimizer's
    state, when it kept one): a resume from it has all it needs."""
    stored = set(round_.adapter_files)
    return set(ADAPTER_FILES) <= stored and set(round_.declared_files) <= stored


def last_merged_round(campaign: Campaign) -> int | None:
    """The highest round n such that rounds 0..n are all on record with their merged adapter; None if not round 0."""
    merged = {r.number for r in campaign.rounds.all() if round_files_stored(r)}
    n = -1
    while n + 1 in merged:
        n += 1
    return n if n >= 0 else None


def campaign_resume_point(*, campaign: Campaign) -> int:
    """The round the next run starts from, with every later round (a partial one the failed run left) removed.

    The new run redoes those rounds, so the record never holds a round twice or a round from two runs.
    """
    merged = last_merged_round(campaign)
    start = merged or 0
    later = campaign.rounds.filter(number__gt=start) if merged is not None else campaign.rounds.all()
    folders = [round_folder(campaign_output_dir(campaign), n) for n in later.values_list("number", flat=True)]
    later.delete()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return start


def _open_attempt(campaign: Campaign) -> CampaignAttempt | None:
    return (
        campaign.attempts.filter(outcome__in=[CampaignAttempt.Outcome.QUEUED, CampaignAttempt.Outcome.RUNNING])
        .order_by("-number")
        .first()
    )


def _attempt_queue(campaign: Campaign, trigger: str) -> CampaignAttempt:
    number = (campaign.attempts.order_by("-number").values_list("number", flat=True).first() or 0) + 1
    return CampaignAttempt.objects.create(campaign=campaign, number=number, trigger=trigger)


def _attempt_started(campaign: Campaign, run_id: int, start_round: int) -> None:
    attempt = _open_attempt(campaign) or _attempt_queue(campaign, CampaignAttempt.Trigger.LAUNCH)
    attempt.flwr_run_id, attempt.from_round = str(run_id), start_round
    attempt.started_at, attempt.outcome = timezone.now(), CampaignAttempt.Outcome.RUNNING
    attempt.save(update_fields=["flwr_run_id", "from_round", "started_at", "outcome"])
    _announce(campaign, "campaign.attempt", attempt.number, trigger=attempt.trigger, flwr_run_id=str(run_id),
              from_round=start_round)  # fmt: skip


def _attempt_end(campaign: Campaign, outcome: str, kind: str = "", reason: str = "") -> CampaignAttempt | None:
    attempt = _open_attempt(campaign)
    if attempt is None:
        return None
    attempt.outcome, attempt.ended_at = outcome, timezone.now()
    attempt.failure_kind = kind or attempt.failure_kind
    attempt.reason = reason or attempt.reason
    attempt.save(update_fields=["outcome", "ended_at", "failure_kind", "reason"])
    _announce(campaign, "campaign.attempt-end", attempt.number, flwr_run_id=attempt.flwr_run_id, outcome=outcome,
              kind=attempt.failure_kind, reason=attempt.reason)  # fmt: skip
    return attempt


def _announce(campaign: Campaign, action: str, attempt: int, **detail: Any) -> None:
    """Tell the audit log (console, which listens) about an attempt, by the platform itself."""
    attempt_recorded.send(sender=Campaign, campaign=campaign, action=action, detail={"attempt": attempt, **detail})


def attempts_used(campaign: Campaign) -> int:
    """Attempts counted against `max_attempts`: the latest launch or staff Resume and the automatic ones since."""
    used = 0
    for trigger in campaign.attempts.order_by("-number").values_list("trigger", flat=True):
        used += 1
        if trigger != CampaignAttempt.Trigger.AUTO:
            break
    return used


def campaign_run_failed(*, campaign_id: int, run_id: str, sub_status: str, details: str = "") -> None:
    """The campaign's Flower run ended without completing: resume it from the last merged round, or fail it.

    Training failure (the ServerApp said so, or staff/someone stopped the run): the campaign fails with its reason.
    Infrastructure failure (anything else: SuperLink restart, ServerApp or worker crash, nodes gone): a new run
    continues from the last merged round, until `max_attempts` runs have been used.
    """
    from campaigns.tasks import campaign_submit_task, enqueue

    complete = False
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().filter(pk=campaign_id).first()
        if campaign is None or campaign.status != Campaign.Status.RUNNING or campaign.flwr_run_id != run_id:
            return  # handled already (a second follow task), or cancelled meanwhile
        attempt = _open_attempt(campaign)
        said = attempt.reason if attempt is not None and attempt.failure_kind == CampaignAttempt.Kind.TRAINING else ""
        ended = f"Flower run {run_id} ended {sub_status}" + (f": {details}" if details else "")
        if said or sub_status == "stopped":
            reason = f"training failed: {said}" if said else f"{ended} (stopped outside the platform)"
            _attempt_end(campaign, CampaignAttempt.Outcome.FAILED, CampaignAttempt.Kind.TRAINING, reason)
            _fail(campaign, reason)
            return
        _attempt_end(campaign, CampaignAttempt.Outcome.FAILED, CampaignAttempt.Kind.INFRASTRUCTURE, ended)
        merged = last_merged_round(campaign)
        if merged == campaign.num_rounds:  # every round is on record: the run died after its last report
            complete = True
        elif attempts_used(campaign) >= campaign.max_attempts:
            _fail(campaign, f"{ended}; gave up after {attempts_used(campaign)} attempts (max_attempts)")
            return
        else:
            campaign.status = Campaign.Status.QUEUED
            campaign.flwr_run_id = ""  # the old run's ServerApp, should it still live, may no longer report
            campaign.save(update_fields=["status", "flwr_run_id"])
            _attempt_queue(campaign, CampaignAttempt.Trigger.AUTO)
            transaction.on_commit(lambda: enqueue(campaign_submit_task, campaign.pk))
            log.warning("campaign %s: %s; resuming from round %s", campaign.pk, ended, merged or 0)
    if complete:
        campaign_complete(campaign=campaign)


def campaign_follow(*, campaign_id: int) -> bool:
    """Check the Flower run once; finish the campaign when the run has ended. True when nothing is left to do."""
    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None or campaign.status != Campaign.Status.RUNNING:
        return True
    try:
        state = control.run_state(superlink_client(), int(campaign.flwr_run_id))
    except LookupError:  # a SuperLink with in-memory state forgets its runs when it restarts
        state = control.RunState("finished", "failed", "the SuperLink no longer knows the run (it restarted)")
    if not state.finished:
        return False
    if not state.succeeded:
        campaign_run_failed(
            campaign_id=campaign.pk, run_id=campaign.flwr_run_id, sub_status=state.sub_status, details=state.details
        )
        return True
    campaign_complete(campaign=campaign)
    return True


def campaign_fail(*, campaign: Campaign, reason: str) -> None:
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
        _attempt_end(campaign, CampaignAttempt.Outcome.FAILED, reason=reason)
        _fail(campaign, reason)


def _fail(campaign: Campaign, reason: str) -> None:
    """Inside a transaction holding the campaign's row."""
    if campaign.is_terminal:
        return
    campaign.status = Campaign.Status.FAILED
    campaign.status_reason = reason
    campaign.finished_at = timezone.now()
    campaign.save(update_fields=["status", "status_reason", "finished_at"])
    log.warning("campaign %s failed: %s", campaign.pk, reason)


def campaign_complete(*, campaign: Campaign) -> None:
    """All rounds must be on record with their merged adapter; then publish the release."""
    missing = [
        n
        for n in range(campaign.num_rounds + 1)
        if not campaign.rounds.filter(number=n).exclude(adapter_files={}).exists()
    ]
    last = campaign.rounds.filter(number=campaign.num_rounds).first()
    if missing or last is None or not round_files_stored(last):
        campaign_fail(
            campaign=campaign,
            reason=f"the run finished but rounds {missing or [campaign.num_rounds]} never reached the platform",
        )
        return
    # A round whose every reply was refused by update validation is a training failure: the campaign fails. A round
    # whose nodes all dropped out (errors, timeouts: connections, restarts) merged nothing and kept the adapter as it
    # was; it is on record with its failures, and it does not throw away the rounds that did train.
    trained = campaign.rounds.filter(number__gte=1)
    if trained.filter(participants=0, rejected__gt=0).exists():
        campaign_fail(
            campaign=campaign, reason="a round finished with no successful node update (every update was refused)"
        )
        return
    if not trained.filter(participants__gt=0).exists():
        campaign_fail(campaign=campaign, reason="no round had a successful node update")
        return
    try:
        with transaction.atomic():
            campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
            if campaign.is_terminal:
                return
            _attempt_end(campaign, CampaignAttempt.Outcome.COMPLETED)
            campaign_completing.send(sender=Campaign, campaign=campaign)  # releases publishes it (auto_publish)
            campaign.status = Campaign.Status.COMPLETED
            campaign.finished_at = timezone.now()
            campaign.save(update_fields=["status", "finished_at"])
    except ValidationError as exc:  # e.g. the merged adapter on disk is not the one on record
        campaign_fail(campaign=campaign, reason=f"publishing refused: {' '.join(exc.messages)}")
