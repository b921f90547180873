"""Campaign writes: create, launch, submit to the SuperLink, follow, record reports, finish."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, transaction
from django.utils import timezone

from bayanihan_site.superlink import superlink_client
from campaigns.models import BaseCheckpoint, Campaign, CampaignAttempt, NodeFlag, Participation, Round
from campaigns.signals import attempt_recorded, campaign_completing
from community.models import Node
from federation import control, events, pki
from federation.artifacts import ADAPTER_FILES, CONTENT_SHA256_HEADER, ROUND_FILES, round_folder
from federation.basemodel import describe_checkpoint
from federation.config import (
    AggregationConfig,
    ConfigError,
    EvaluationConfig,
    ServerConfig,
    ServerPaths,
    TrainConfig,
    WireConfig,
)

log = logging.getLogger(__name__)

# A round must leave nodes time to start, load the model and train; a week is longer than anyone waits.
ROUND_TIMEOUT_MIN, ROUND_TIMEOUT_MAX = 30, 7 * 24 * 3600
# Flower runs per campaign (launch + automatic resumes): enough for a bad night, not an endless loop.
MAX_ATTEMPTS_CAP = 20


def base_model_register(*, path: Path, name: str, hf_id: str = "", note: str = "") -> BaseCheckpoint:
    """Register (or refresh) a local HF checkpoint directory, pinning each file by sha256."""
    try:
        described = describe_checkpoint(Path(path), model_id=hf_id or None)
    except ValueError as exc:
        raise ValidationError({"path": str(exc)}) from exc
    base, _ = BaseCheckpoint.objects.update_or_create(
        name=name,
        defaults={
            "hf_id": described["id"],
            "path": str(Path(path).resolve()),
            "files": described["files"],
            "license": described.get("license") or "",
            "note": note or described.get("note", ""),
            "parameters": described.get("parameters"),
        },
    )
    return base


def _run_config_section(kind: Any, values: dict[str, Any] | None, field: str, errors: dict[str, Any]) -> Any:
    """`values` read as `kind` (a run-config dataclass); its problems and any key it does not know go to
    errors[field], one message each, and its defaults stand in meanwhile."""
    unknown = sorted(set(values or {}) - set(kind().to_run_config()))
    try:
        section = kind.from_run_config(values or {})
    except ConfigError as exc:
        section = kind()
        errors[field] = list(exc.problems)
    if unknown:
        errors.setdefault(field, []).append(f"unknown keys: {', '.join(unknown)}")
    return section


def campaign_create(
    *,
    name: str,
    base_model: BaseCheckpoint,
    data_task: str,
    heldout_path: str,
    train_config: dict[str, Any] | None = None,
    aggregation: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    num_rounds: int = 2,
    min_nodes: int = 2,
    nodes_per_round: int = 0,
    round_timeout: int = 3600,
    max_attempts: int = 3,
    transfer_dtype: str = "float32",
    auto_publish: bool = True,
    card_notes: str = "",
    by: Any = None,
) -> Campaign:
    """`aggregation`: AggregationConfig run-config keys (strategy, max-update-norm, dp-noise-multiplier, ...);
    `evaluation`: EvaluationConfig's (task-metrics, task-max-records, task-max-new-tokens)."""
    try:
        config = TrainConfig.from_run_config(train_config or {})
    except ConfigError as exc:
        raise ValidationError({"train_config": list(exc.problems)}) from exc
    errors: dict[str, Any] = {}
    merging = _run_config_section(AggregationConfig, aggregation, "aggregation", errors)
    scoring = _run_config_section(EvaluationConfig, evaluation, "evaluation", errors)
    if not 1 <= num_rounds <= 1000:
        errors["num_rounds"] = "must be between 1 and 1000"
    if min_nodes < 1:
        errors["min_nodes"] = "must be at least 1"
    if nodes_per_round < 0:
        errors["nodes_per_round"] = "must be 0 (every connected node) or a number of nodes"
    if not ROUND_TIMEOUT_MIN <= round_timeout <= ROUND_TIMEOUT_MAX:
        errors["round_timeout"] = f"must be between {ROUND_TIMEOUT_MIN} and {ROUND_TIMEOUT_MAX} seconds"
    if not 1 <= max_attempts <= MAX_ATTEMPTS_CAP:
        errors["max_attempts"] = f"must be between 1 and {MAX_ATTEMPTS_CAP}"
    try:
        WireConfig(transfer_dtype=transfer_dtype)
    except ConfigError as exc:
        errors["transfer_dtype"] = list(exc.problems)
    if not Path(heldout_path).is_file():
        errors["heldout_path"] = f"{heldout_path}: no such file"
    if errors:
        raise ValidationError(errors)
    return Campaign.objects.create(
        name=name,
        base_model=base_model,
        data_task=data_task,
        heldout_path=str(heldout_path),
        train_config=config.to_run_config(),
        aggregation=merging.to_run_config(),
        evaluation=scoring.to_run_config(),
        num_rounds=num_rounds,
        min_nodes=min_nodes,
        nodes_per_round=nodes_per_round,
        round_timeout=round_timeout,
        max_attempts=max_attempts,
        transfer_dtype=transfer_dtype,
        auto_publish=auto_publish,
        card_notes=card_notes,
        created_by=by if getattr(by, "pk", None) else None,
    )


def campaign_launch(*, campaign: Campaign, by: Any = None) -> Campaign:
    """Queue a draft campaign; the worker submits it once this transaction has committed."""
    from campaigns.tasks import campaign_submit_task, enqueue

    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if campaign.status != Campaign.Status.DRAFT:
            raise ValidationError(f"campaign is {campaign.status}; only a draft can be launched")
        campaign.status = Campaign.Status.QUEUED
        campaign.launched_at = timezone.now()
        campaign.save(update_fields=["status", "launched_at"])
        _attempt_queue(campaign, CampaignAttempt.Trigger.LAUNCH)
        transaction.on_commit(lambda: enqueue(campaign_submit_task, campaign.pk))
    return campaign


def campaign_output_dir(campaign: Campaign) -> Path:
    return Path(settings.DATA_DIR) / "campaigns" / str(campaign.pk)


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


def report_failure(*, campaign: Campaign, event: dict[str, Any]) -> None:
    """The ServerApp's terminal `failed` event: kind=training marks the current attempt as a training failure.

    Only that kind is recorded (anything else is ignored): it is what stops the campaign instead of resuming it.
    """
    if event.get("kind") != events.FAILURE_TRAINING:
        return
    with transaction.atomic():
        Campaign.objects.select_for_update().filter(pk=campaign.pk).first()
        attempt = _open_attempt(campaign)
        if attempt is not None:
            attempt.failure_kind = CampaignAttempt.Kind.TRAINING
            attempt.reason = str(event.get("reason") or "the ServerApp gave no reason")[:2000]
            attempt.save(update_fields=["failure_kind", "reason"])


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


# --- reports from the ServerApp -------------------------------------------------------------


def link_secret_sha256() -> str:
    """sha256 (hex) of the link secret the ServerApp holds: LINK_SECRET_SHA256 where the site runs on another host
    than the SuperLink, else read from LINK_SECRET_FILE (made on first use, 0600, as the Stack makes it)."""
    if settings.LINK_SECRET_SHA256:
        return settings.LINK_SECRET_SHA256
    return hashlib.sha256(pki.ensure_secret_file(Path(settings.LINK_SECRET_FILE)).encode()).hexdigest()


class ReportRefused(Exception):
    """Why a ServerApp's request is refused; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


def report_link_check(*, campaign: Campaign, secret: str, run_id: str) -> None:
    """A ServerApp may read a campaign's server config and report on it only with the link secret (compared by
    hash, in constant time), while the campaign runs, and for the campaign's current Flower run.

    The run id may be unknown for a moment (campaign_submit records it right after StartRun returns): then 503, and
    the ServerApp asks again. Raises ReportRefused.
    """
    if not secret or not hmac.compare_digest(hashlib.sha256(secret.encode()).hexdigest(), link_secret_sha256()):
        raise ReportRefused("invalid link secret")
    if campaign.status == Campaign.Status.QUEUED and not campaign.flwr_run_id:
        raise ReportRefused("the campaign's run is being submitted; ask again shortly", status=503)
    if campaign.status != Campaign.Status.RUNNING:
        raise ReportRefused(f"campaign {campaign.pk} is {campaign.status}: it takes no reports")
    if not run_id or run_id != campaign.flwr_run_id:
        raise ReportRefused(f"run {run_id or '(none)'} is not campaign {campaign.pk}'s current Flower run")


class ReportConflict(ValidationError):
    """A report that contradicts what is already on record (the report API answers 409)."""


def _event_digest(event: dict[str, Any]) -> str:
    """The event's content, its send `time` aside: a retry re-sends the same body, so the same digest."""
    body = {k: v for k, v in event.items() if k != "time"}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"round event: not plain JSON ({exc})") from exc
    return hashlib.sha256(text.encode()).hexdigest()


def round_sealed(round_: Round) -> bool:
    """On record for good: its event is recorded and every file that event declared is stored with its sha256."""
    return bool(round_.event_sha256 and round_.declared_files) and round_.adapter_files == round_.declared_files


def _unenrolled(row: events.NodeRow) -> str:
    what = f"failed: {row.error}" if row.error else f"refused: {row.rejected}" if row.rejected else "its update merged"
    return f"node id {row.node_id} is not an enrolled node; its row is not recorded ({events.cut(what, 300)})"


def report_round(*, campaign: Campaign, event: dict[str, Any]) -> Round:
    """Record one round from the ServerApp's round event.

    Nothing in it is trusted: every field is checked against `federation.events` (types, finite, bounds, round
    in [0, num_rounds]). A bad field of the event itself raises ValidationError naming it (the API answers
    400); a bad node row never fails the event: it is stored as that node's error. Nodes are the enrolled
    `Node` rows, found by Flower node id: the name a report gives is ignored, and an id no enrolled node has
    creates nothing; it is listed in `Round.errors` instead.

    Resends and conflicts (what the ServerApp's retries and automatic resume rely on):
    - the same event again (same content; its send `time` aside) is a no-op and returns the round as recorded,
      so a Reporter retrying after a lost answer or a web restart gets 200, not an error;
    - a different event for a *sealed* round (`round_sealed`: its event recorded and every adapter file that
      event declared uploaded with the declared sha256) raises ReportConflict (409): a round on record never
      changes, and neither do its files;
    - a different event for a round not sealed yet (its files never all arrived: the run died mid-round)
      replaces it, and files stored for the old event are dropped: a resumed run redoes that round.

    A refused reply (`rejected`) is kept on the node's participation with its reason, counted in
    `Round.rejected` rather than `participants`, and flags the node for staff.
    """
    try:
        parsed = events.parse_round(event, num_rounds=campaign.num_rounds)
    except events.EventError as exc:
        raise ValidationError(f"round event: {exc}") from exc
    digest = _event_digest(event)
    with transaction.atomic():
        Campaign.objects.select_for_update().filter(pk=campaign.pk).first()  # one report at a time per campaign
        round_ = Round.objects.filter(campaign=campaign, number=parsed.round).first()
        if round_ is not None and round_.event_sha256:
            if round_.event_sha256 == digest:
                return round_
            if round_sealed(round_):
                raise ReportConflict(
                    f"round {parsed.round} is already on record with its files; a different event for it is refused"
                )
        if round_ is None:
            round_ = Round(campaign=campaign, number=parsed.round)
        else:
            round_.participations.all().delete()  # the replaced event's rows (and their flags)
        stale = [n for n, sha in round_.adapter_files.items() if parsed.adapter_files.get(n) != sha]
        folder = round_folder(campaign_output_dir(campaign), parsed.round)
        transaction.on_commit(lambda: [(folder / n).unlink(missing_ok=True) for n in stale])

        ids = [str(r.node_id) for r in parsed.nodes if r.node_id is not None]
        enrolled = {n.flwr_node_id: n for n in Node.objects.filter(flwr_node_id__in=ids)}
        errors: list[str] = []
        rows: list[tuple[Node, events.NodeRow]] = []
        for row in parsed.nodes:
            node = enrolled.get(str(row.node_id))
            if row.node_id is None:
                errors.append("a node row was refused: " + "; ".join(row.problems))
            elif node is None:
                errors.append(_unenrolled(row))
            elif any(node == seen for seen, _ in rows):
                errors.append(f"node id {row.node_id} has more than one row; only the first is recorded")
            else:
                rows.append((node, row))
        ok = [r for _, r in rows if not r.problems and not r.error and not r.rejected]
        _set_evaluation(round_, parsed.evaluation)  # None: being evaluated (a replaced event's evaluation goes too)
        round_.train_loss, round_.duration_s = parsed.train_loss, parsed.seconds
        round_.epsilon, round_.delta = parsed.epsilon, parsed.delta
        round_.participants = len(ok)
        round_.failures = sum(1 for _, r in rows if r.error or r.problems)
        round_.rejected = sum(1 for _, r in rows if r.rejected and not r.error and not r.problems)
        round_.bytes_up = sum(int(r.metrics.get(events.BYTES_UP) or 0) for r in ok)
        round_.bytes_down = sum(int(r.metrics.get(events.BYTES_DOWN) or 0) for r in ok)
        round_.declared_files = parsed.adapter_files
        round_.adapter_files = {n: sha for n, sha in round_.adapter_files.items() if n not in stale}
        round_.event_sha256 = digest
        round_.errors = errors
        round_.save()
        for node, row in rows:
            _record_participation(campaign, round_, node, row)
        Node.objects.filter(pk__in=[node.pk for node, _ in rows]).update(last_seen=timezone.now())
    return round_


EVALUATION_FIELDS = (
    "eval_loss", "eval_perplexity", "task_metrics", "task_records", "group_metrics", "evaluated_at",
)  # fmt: skip


def _set_evaluation(round_: Round, evaluation: events.Evaluation | None) -> None:
    scores = evaluation.scores if evaluation else events.HeldoutScores()
    round_.eval_loss = evaluation.eval_loss if evaluation else None
    round_.eval_perplexity = evaluation.eval_perplexity if evaluation else None
    round_.task_metrics, round_.task_records, round_.group_metrics = scores.metrics, scores.records, scores.groups
    round_.evaluated_at = timezone.now() if evaluation else None


def report_evaluation(*, campaign: Campaign, event: dict[str, Any]) -> Round:
    """Record a merged round's held-out evaluation (the EVALUATED event, which follows the round's own event).

    Checked like the round event (`federation.events.parse_evaluation`; a bad field raises ValidationError). The
    round must be on record (ReportConflict otherwise: the ServerApp reports a round before evaluating it). The
    first evaluation of a round stands: a resumed run evaluates the round it starts from again, in case the run
    that recorded it stopped first, and a second evaluation of the same adapter changes nothing."""
    try:
        parsed = events.parse_evaluation(event, num_rounds=campaign.num_rounds)
    except events.EventError as exc:
        raise ValidationError(f"evaluation event: {exc}") from exc
    with transaction.atomic():
        Campaign.objects.select_for_update().filter(pk=campaign.pk).first()  # one report at a time per campaign
        round_ = Round.objects.filter(campaign=campaign, number=parsed.round).exclude(event_sha256="").first()
        if round_ is None:
            raise ReportConflict(f"round {parsed.round} is not on record: its evaluation cannot be recorded")
        if round_.evaluated_at is None:
            _set_evaluation(round_, parsed)
            # recorded_at stays the time the round went on record
            round_.save(update_fields=[*EVALUATION_FIELDS])
    return round_


def _record_participation(campaign: Campaign, round_: Round, node: Node, row: events.NodeRow) -> None:
    if row.problems:  # not trusted: no numbers of it go into the ledger
        row = events.NodeRow(
            row.node_id, error=events.cut("report refused by the platform: " + "; ".join(row.problems))
        )
    metrics = row.metrics
    participation = Participation.objects.create(
        round=round_,
        node=node,
        samples=int(metrics.get(events.NUM_EXAMPLES) or 0),
        tokens=int(metrics.get(events.TOKENS) or 0),
        train_loss=metrics.get(events.TRAIN_LOSS),
        val_loss_before=metrics.get(events.VAL_LOSS_BEFORE),
        val_loss_after=metrics.get(events.VAL_LOSS_AFTER),
        seconds=metrics.get(events.TRAIN_SECONDS),
        bytes_up=int(metrics.get(events.BYTES_UP) or 0),
        bytes_down=int(metrics.get(events.BYTES_DOWN) or 0),
        data_fingerprint=row.fingerprint,
        error=row.error,
        rejected_reason="" if row.error else row.rejected,
        update_norm=row.update_norm,
        data_value=row.data_value,
    )
    if participation.rejected_reason:
        NodeFlag.objects.create(
            participation=participation,
            node=node,
            reason=f"{campaign} round {round_.number}: {participation.rejected_reason}",
        )


def report_file(*, campaign: Campaign, round_number: int, name: str, chunks: Any, sha256: str) -> str:
    """Store one file of a round (ROUND_FILES: its merged adapter's, or the server optimizer's state): only the bytes
    the round's event declared, and only once.

    The round event comes first and names each file's sha256 (`adapter_files`); the upload is streamed to disk
    and must hash to exactly that (ReportConflict otherwise). A stored file is never replaced: the same bytes
    again are a no-op (a retry), and nothing else hashes to the declared sha256.
    """
    if name not in ROUND_FILES:
        raise ValidationError(f"{name!r} is not a round file ({', '.join(ROUND_FILES)})")
    if not 0 <= round_number <= campaign.num_rounds:
        raise ValidationError(f"round {round_number} is not in [0, {campaign.num_rounds}]")
    round_ = Round.objects.filter(campaign=campaign, number=round_number).first()
    declared = round_.declared_files.get(name) if round_ else None
    if not declared:
        raise ReportConflict(f"round {round_number} has no recorded event declaring {name}; report the round first")
    if sha256 and sha256 != declared:
        raise ReportConflict(f"{name}: {CONTENT_SHA256_HEADER} is not the sha256 round {round_number}'s event declared")
    folder = round_folder(campaign_output_dir(campaign), round_number)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{name}.{secrets.token_hex(4)}.partial"  # concurrent retries never share one
    digest, size = hashlib.sha256(), 0
    try:
        with partial.open("wb") as fh:
            for chunk in chunks:
                size += len(chunk)
                if size > settings.MAX_ADAPTER_UPLOAD_BYTES:
                    raise ValidationError(f"{name} is larger than {settings.MAX_ADAPTER_UPLOAD_BYTES} bytes")
                digest.update(chunk)
                fh.write(chunk)
        if digest.hexdigest() != declared:
            raise ReportConflict(f"{name}: the uploaded bytes are not the file round {round_number}'s event declared")
        with transaction.atomic():
            round_ = Round.objects.select_for_update().get(pk=round_.pk)
            if round_.declared_files.get(name) != declared:
                raise ReportConflict(f"round {round_number}'s event changed while {name} was uploading")
            if round_.adapter_files.get(name) != declared or not (folder / name).is_file():
                partial.replace(folder / name)
                round_.adapter_files = {**round_.adapter_files, name: declared}
                round_.save(update_fields=["adapter_files"])
    finally:
        partial.unlink(missing_ok=True)
    return declared


# --- staff actions from the console ---------------------------------------------------------


def campaign_cancel(*, campaign: Campaign, by: Any = None, reason: str = "") -> Campaign:
    """Stop a queued or running campaign: its Flower run is stopped on the SuperLink, the campaign is cancelled.

    Marked cancelled first so that the follow task, seeing the stopped run, leaves it alone (it is terminal),
    and the ServerApp's reports from then on are refused.
    """
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if campaign.status not in (Campaign.Status.QUEUED, Campaign.Status.RUNNING):
            raise ValidationError(f"campaign is {campaign.status}; only a queued or running one can be cancelled")
        who = getattr(by, "username", None) or "staff"
        campaign.status = Campaign.Status.CANCELLED
        campaign.status_reason = f"cancelled by {who}" + (f": {reason}" if reason else "")
        _attempt_end(campaign, CampaignAttempt.Outcome.CANCELLED, reason=campaign.status_reason)
        campaign.finished_at = timezone.now()
        campaign.save(update_fields=["status", "status_reason", "finished_at"])
    if campaign.flwr_run_id:
        try:
            control.stop_run(superlink_client(), int(campaign.flwr_run_id))
        except Exception as exc:  # the run may already have ended; the campaign stays cancelled either way
            log.warning("campaign %s: stopping Flower run %s failed: %s", campaign.pk, campaign.flwr_run_id, exc)
    log.info("campaign %s cancelled by %s", campaign.pk, getattr(by, "username", by))
    return campaign


def campaign_resume(*, campaign: Campaign, by: Any = None) -> Campaign:
    """Relaunch a failed or cancelled campaign as a new Flower run that continues from its last merged round.

    Rounds 0..last merged stay on record (the new run starts from that round's merged adapter and numbers its
    rounds on from there); a partial round after it is dropped when the run is submitted and redone. A campaign
    with no merged round starts from round 0. The new attempt starts a fresh count against `max_attempts`.
    """
    from campaigns.tasks import campaign_submit_task, enqueue

    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if campaign.status not in (Campaign.Status.FAILED, Campaign.Status.CANCELLED):
            raise ValidationError(f"campaign is {campaign.status}; only a failed or cancelled one can be resumed")
        campaign.status = Campaign.Status.QUEUED
        campaign.status_reason = ""
        campaign.flwr_run_id = ""
        campaign.launched_at = timezone.now()
        campaign.finished_at = None
        campaign.save(update_fields=["status", "status_reason", "flwr_run_id", "launched_at", "finished_at"])
        _attempt_queue(campaign, CampaignAttempt.Trigger.RESUME)
        transaction.on_commit(lambda: enqueue(campaign_submit_task, campaign.pk))
    log.info("campaign %s resumed by %s", campaign.pk, getattr(by, "username", by))
    return campaign


def campaign_set_card_notes(*, campaign: Campaign, notes: str, by: Any = None) -> Campaign:
    """Staff's free text for the model card; it can change only until the release is published (then immutable)."""
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if hasattr(campaign, "release"):  # the reverse one-to-one of releases.Release: published
            raise ValidationError({"card_notes": "the release is published; its model card can no longer change"})
        campaign.card_notes = notes.strip()
        campaign.save(update_fields=["card_notes"])
    return campaign
