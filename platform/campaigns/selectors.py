"""Campaign reads: the contribution ledger (who gave what, round by round)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db.models import Avg, Count, Q, Sum

from campaigns.models import BaseCheckpoint, Campaign, CampaignAttempt, NodeFlag, Participation

# Contributions count only when the server aggregated them: a failed or refused reply gave nothing.
ACCEPTED = Q(error="", rejected_reason="")


@dataclass(frozen=True)
class LedgerTotal:
    """One node's contribution over a whole campaign."""

    node: str  # public pseudonym
    name: str
    rounds: int  # rounds whose update was aggregated
    refused: int  # rounds whose update was rejected by validation
    failed: int
    samples: int
    tokens: int
    seconds: float
    bytes_up: int
    bytes_down: int
    data_value: float | None  # mean over aggregated rounds; see federation.strategy.DATA_VALUE


def ledger_entries(campaign: Campaign) -> list[Participation]:
    """Every node in every training round, in round then pseudonym order."""
    return list(
        Participation.objects.filter(round__campaign=campaign, round__number__gte=1)
        .select_related("node", "round")
        .order_by("round__number", "node__pseudonym")
    )


def ledger_totals(campaign: Campaign) -> list[LedgerTotal]:
    rows = (
        Participation.objects.filter(round__campaign=campaign, round__number__gte=1)
        .values("node__pseudonym", "node__name")
        .annotate(
            rounds=Count("pk", filter=ACCEPTED),
            refused=Count("pk", filter=~Q(rejected_reason="") & Q(error="")),
            failed=Count("pk", filter=~Q(error="")),
            samples=Sum("samples", filter=ACCEPTED, default=0),
            tokens=Sum("tokens", filter=ACCEPTED, default=0),
            seconds=Sum("seconds", filter=ACCEPTED, default=0.0),
            bytes_up=Sum("bytes_up", filter=ACCEPTED, default=0),
            bytes_down=Sum("bytes_down", filter=ACCEPTED, default=0),
            data_value=Avg("data_value", filter=ACCEPTED),
        )
        .order_by("node__pseudonym")
    )
    return [LedgerTotal(node=r.pop("node__pseudonym"), name=r.pop("node__name"), **r) for r in rows]


def open_flags(campaign: Campaign | None = None) -> list[NodeFlag]:
    flags = NodeFlag.objects.filter(resolved_at=None).select_related("node", "participation__round__campaign")
    if campaign is not None:
        flags = flags.filter(participation__round__campaign=campaign)
    return list(flags)


def base_models_public() -> list[dict]:
    """What a contributor's `join` compares its checkpoint with: ids and file hashes, never the server's paths."""
    return [
        {"name": m.name, "hf_id": m.hf_id, "files": m.files}
        for m in BaseCheckpoint.objects.order_by("name").only("name", "hf_id", "files")
    ]


def round_file(*, campaign: Campaign, round_number: int, name: str) -> tuple[Path, str]:
    """A stored file of a round (its merged adapter's, or the server optimizer's state) and the sha256 on record for
    it; LookupError when there is none."""
    from campaigns.services.setup import campaign_output_dir
    from federation.artifacts import ROUND_FILES, round_folder

    round_ = campaign.rounds.filter(number=round_number).first()
    sha = round_.adapter_files.get(name) if round_ is not None and name in ROUND_FILES else None
    path = round_folder(campaign_output_dir(campaign), round_number) / name
    if not sha or not path.is_file():
        raise LookupError(f"round {round_number} has no stored {name}")
    return path, sha


def campaign_attempts(campaign: Campaign) -> list[CampaignAttempt]:
    """Every Flower run of the campaign, first to last (the campaign page, provenance)."""
    return list(campaign.attempts.order_by("number"))


def attempt_record(attempt: CampaignAttempt) -> dict[str, Any]:
    """An attempt as provenance.json states it."""
    return {
        "attempt": attempt.number,
        "trigger": attempt.trigger,
        "flwr_run_id": attempt.flwr_run_id or None,
        "from_round": attempt.from_round,
        "started_at": attempt.started_at.isoformat() if attempt.started_at else None,
        "ended_at": attempt.ended_at.isoformat() if attempt.ended_at else None,
        "outcome": attempt.outcome,
        "failure_kind": attempt.failure_kind or None,
        "reason": attempt.reason or None,
    }
