"""Reports from a campaign's ServerApp: the link check, round events (each node's participation), round files, and
its terminal training failure."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from campaigns.models import Campaign, CampaignAttempt, NodeFlag, Participation, Round
from campaigns.services.runs import _open_attempt
from campaigns.services.setup import campaign_output_dir
from community.models import Node
from federation import events, pki
from federation.artifacts import CONTENT_SHA256_HEADER, ROUND_FILES, round_folder


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
