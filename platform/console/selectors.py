"""Console reads: the dashboard, a campaign as it runs, people and nodes, releases, the audit log — and the one
read behind a contributor's own page (`/me/`, see `console.contributor_views`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Case, Count, Q, QuerySet, Sum, Value, When
from django.utils import timezone

from campaigns.models import BaseCheckpoint, Campaign, Participation, Round
from campaigns.selectors import campaign_attempts, open_flags
from community.models import Contributor, Node
from console import charts
from console.models import AuditEntry
from federation import events
from federation.config import AggregationConfig, EvaluationConfig, TrainConfig
from federation.strategy import server_optimizer_text
from releases.models import Release

ACTIVE = (Campaign.Status.QUEUED, Campaign.Status.RUNNING)


def _online_since() -> Any:
    return timezone.now() - timedelta(seconds=settings.NODE_ONLINE_SECONDS)


def nodes_online() -> QuerySet[Node]:
    return Node.objects.filter(status=Node.Status.ACTIVE, last_seen__gte=_online_since()).select_related("contributor")


def dashboard() -> dict[str, Any]:
    return {
        "nodes_online": list(nodes_online().order_by("name")),
        "nodes_total": Node.objects.filter(status=Node.Status.ACTIVE).count(),
        "campaigns_running": list(
            Campaign.objects.filter(status__in=ACTIVE).select_related("base_model").order_by("-launched_at")
        ),
        "last_rounds": list(Round.objects.select_related("campaign").order_by("-recorded_at", "-pk")[:8]),
        "pending": list(Contributor.objects.filter(status=Contributor.Status.PENDING).order_by("created_at")),
        "releases": list(Release.objects.select_related("campaign").order_by("-created_at", "-pk")[:5]),
        "awaiting_publish": list(unpublished_campaigns()),
        "open_flags": open_flags(),
    }


def campaign_list() -> QuerySet[Campaign]:
    return (
        Campaign.objects.select_related("base_model").annotate(recorded=Count("rounds")).order_by("-created_at", "-pk")
    )


def base_models() -> QuerySet[BaseCheckpoint]:
    return BaseCheckpoint.objects.order_by("name")


def unpublished_campaigns() -> QuerySet[Campaign]:
    """Completed campaigns with no release yet: auto-publish was off, staff publish them from the console."""
    return Campaign.objects.filter(status=Campaign.Status.COMPLETED, release__isnull=True).order_by("-finished_at")


def release_of(campaign: Campaign) -> Release | None:
    return Release.objects.filter(campaign=campaign).first()


@dataclass
class NodeProgress:
    """One node's part in the campaign so far: what it reported in the rounds recorded."""

    node: Node
    online: bool
    rounds: list[Participation] = field(default_factory=list)

    @property
    def last(self) -> Participation | None:
        return self.rounds[-1] if self.rounds else None


def _phase(campaign: Campaign, recorded: list[Round]) -> str:
    """What the run is doing now, in words: rounds are recorded only once every node of the round has replied."""
    if campaign.status == Campaign.Status.DRAFT:
        return "draft: not launched yet"
    if campaign.status == Campaign.Status.QUEUED:
        return "queued: waiting for a worker to submit it to the SuperLink"
    if campaign.status != Campaign.Status.RUNNING:
        return campaign.get_status_display().lower()
    if not recorded:
        return "evaluating the base model (round 0)"
    done = max(recorded, key=lambda r: r.number)
    if done.number >= campaign.num_rounds:
        if not done.evaluated:
            return f"all rounds recorded; evaluating round {done.number}, then publishing"
        return "all rounds recorded; finishing and publishing"
    # The server evaluates round N while round N + 1 trains: both are under way.
    evaluating = "" if done.evaluated else f" (round {done.number} being evaluated)"
    return f"round {done.number + 1} of {campaign.num_rounds}: nodes training{evaluating}"


# A bar chart stays readable up to about this many groups (languages) side by side; the model card lists them all.
MAX_CHART_GROUPS = 12
METRIC_NAMES = {events.CHRF: "chrF", events.EXACT_MATCH: "exact match %"}


def score_charts(recorded: list[Round]) -> list[Any]:
    """The held-out scores beyond the overall loss: each task metric per round, and per group (e.g. language) the
    base model (round 0) against the latest round, for the loss and the first task metric. Empty when the
    campaign measured neither."""
    if not recorded:
        return []
    labels = [str(r.number) for r in recorded]
    metrics = [m for m in events.TASK_METRICS if any(m in (r.task_metrics or {}) for r in recorded)]
    found: list[Any] = []
    if metrics:
        found.append(
            charts.line_chart(
                "Held-out task metrics per round (0 = base model)",
                labels,
                [charts.Series(METRIC_NAMES[m], [(r.task_metrics or {}).get(m) for r in recorded]) for m in metrics],
                y_title="score (0-100)",
                fmt="{:.1f}",
            )
        )
    first, last = recorded[0], recorded[-1]
    groups = sorted(set(first.group_metrics or {}) | set(last.group_metrics or {}))[:MAX_CHART_GROUPS]
    if not groups or last is first:
        return found
    for key, name, fmt in [(events.GROUP_LOSS, "held-out loss", "{:.2f}"), *((m, METRIC_NAMES[m], "{:.0f}")
                                                                            for m in metrics[:1])]:  # fmt: skip
        found.append(
            charts.bar_chart(
                f"Per group {name}: round {first.number} vs {last.number}",
                groups,
                [
                    charts.Series(f"round {r.number}", [(r.group_metrics or {}).get(g, {}).get(key) for g in groups])
                    for r in (first, last)
                ],
                y_title=name,
                x_title="group",
                fmt=fmt,
            )
        )
    return found


def campaign_live(campaign: Campaign) -> dict[str, Any]:
    """Everything the campaign page shows that changes while it runs (polled every 2 s)."""
    campaign.refresh_from_db()
    # Every round on record (merged); its held-out evaluation may still be running (Round.evaluated).
    recorded = list(campaign.rounds.order_by("number").prefetch_related("participations"))
    scored = [r for r in recorded if r.eval_loss is not None]
    participations = (
        Participation.objects.filter(round__campaign=campaign, round__number__gte=1)
        .select_related("node", "round")
        .order_by("round__number", "node__name")
    )
    online = set(nodes_online().values_list("pk", flat=True))
    progress: dict[int, NodeProgress] = {}
    for p in participations:
        progress.setdefault(p.node_id, NodeProgress(p.node, p.node_id in online)).rounds.append(p)
    if campaign.status in ACTIVE:  # nodes that may still join this run, though they have not reported yet
        for node in nodes_online():
            progress.setdefault(node.pk, NodeProgress(node, True))
    current = max((r.number for r in recorded), default=None)
    labels = [str(r.number) for r in recorded]
    up = [float(r.bytes_up) for r in recorded]
    down = [float(r.bytes_down) for r in recorded]
    scale, unit = charts.byte_unit(max(up + down, default=0))
    return {
        "campaign": campaign,
        "train": TrainConfig.from_run_config(campaign.train_config),
        "scoring": EvaluationConfig.from_run_config(campaign.evaluation),
        # The server's step in words; empty when the merge is applied as it is (plain federated averaging).
        "server_step": server_optimizer_text(AggregationConfig.from_run_config(campaign.aggregation)),
        "release": release_of(campaign),
        "phase": _phase(campaign, recorded),
        "rounds": recorded,
        "current_round": current,
        "reported_now": [p for p in participations if p.round.number == current] if current else [],
        "nodes": sorted(progress.values(), key=lambda n: n.node.name),
        "is_live": campaign.status in ACTIVE,
        "flags": open_flags(campaign),
        "attempts": campaign_attempts(campaign),
        "charts": [
            charts.line_chart(
                "Held-out eval loss per round (0 = base model)",
                [str(r.number) for r in scored],
                [charts.Series("eval loss", [r.eval_loss for r in scored])],
                y_title="eval loss",
                fmt="{:.4f}",
            ),
            charts.line_chart(
                "Train loss per round (mean over nodes)",
                labels[1:],
                [charts.Series("train loss", [r.train_loss for r in recorded[1:]])],
                y_title="train loss",
                fmt="{:.4f}",
            ),
            charts.bar_chart(
                "Participants per round",
                labels[1:],
                [charts.Series("nodes", [float(r.participants) for r in recorded[1:]])],
                y_title="nodes aggregated",
                fmt="{:.0f}",
                integer=True,
            ),
            charts.bar_chart(
                f"Bytes per round ({unit})",
                labels[1:],
                [
                    charts.Series("up", [v / scale for v in up[1:]]),
                    charts.Series("down", [v / scale for v in down[1:]]),
                ],
                y_title=unit,
                fmt="{:.1f}",
            ),
            *score_charts([r for r in recorded if r.evaluated]),
        ],
    }


def contributors() -> QuerySet[Contributor]:
    return (
        Contributor.objects.select_related("user")
        .annotate(node_count=Count("nodes"))
        # pending first: that is what staff come here for
        .order_by(Case(When(status=Contributor.Status.PENDING, then=Value(0)), default=Value(1)), "created_at")
    )


def nodes() -> list[Node]:
    rows = list(
        Node.objects.select_related("contributor")
        .annotate(rounds_joined=Count("participations", filter=Q(participations__error="")))
        .order_by("status", "name")
    )
    since = _online_since()
    for node in rows:
        node.online = bool(node.status == Node.Status.ACTIVE and node.last_seen and node.last_seen >= since)
    return rows


def releases() -> QuerySet[Release]:
    return Release.objects.select_related("campaign", "yanked_by").order_by("-created_at", "-pk")


def audit_log(limit: int = 500) -> QuerySet[AuditEntry]:
    return AuditEntry.objects.select_related("actor")[:limit]


# --- a contributor's own page ---------------------------------------------------------------


def contributor_overview(contributor: Contributor) -> dict[str, Any]:
    """Everything `/me/` shows one contributor: their nodes (online or not), the rounds their nodes completed
    (failed ones do not count), the samples and tokens those rounds trained on, and the releases that include them."""
    since = _online_since()
    nodes = list(contributor.nodes.order_by("created_at"))
    for node in nodes:
        node.online = bool(node.last_seen and node.last_seen >= since and node.status == node.Status.ACTIVE)
    participations = (
        Participation.objects.filter(node__contributor=contributor, error="")
        .select_related("node", "round__campaign")
        .order_by("-round__recorded_at")
    )
    totals = participations.aggregate(samples=Sum("samples"), tokens=Sum("tokens"))
    # Yanked releases are hidden from everyone but staff, here too.
    releases = Release.objects.filter(
        campaign__rounds__participations__in=participations, yanked_at__isnull=True
    ).distinct()
    return {
        "contributor": contributor,
        "nodes": nodes,
        "participations": participations[:100],
        "rounds": participations.count(),
        "samples": totals["samples"] or 0,
        "tokens": totals["tokens"] or 0,
        "releases": releases,
    }
