from __future__ import annotations

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from campaigns.models import BaseCheckpoint, Campaign, NodeFlag, Participation, Round
from campaigns.selectors import ledger_entries, ledger_totals
from federation.strategy import DATA_VALUE


@admin.register(BaseCheckpoint)
class BaseCheckpointAdmin(admin.ModelAdmin):
    list_display = ("name", "hf_id", "path", "parameters", "created_at")


class RoundInline(admin.TabularInline):
    model = Round
    extra = 0
    fields = (
        "number", "eval_loss", "train_loss", "participants", "failures", "rejected", "epsilon", "delta",
        "bytes_up", "bytes_down", "duration_s", "adapter_files", "errors",
    )  # fmt: skip
    readonly_fields = fields
    can_delete = False


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(head: tuple[str, ...], rows: list[tuple]) -> str:
    header = format_html_join("", "<th>{}</th>", ((h,) for h in head))
    body = format_html_join(
        "", "<tr>{}</tr>", ((format_html_join("", "<td>{}</td>", ((c,) for c in row)),) for row in rows)
    )
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", header, body)


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ("name", "base_model", "status", "num_rounds", "min_nodes", "launched_at", "finished_at")
    list_filter = ("status",)
    readonly_fields = (
        "status", "status_reason", "flwr_run_id", "launched_at", "finished_at", "created_by", "contribution_ledger",
    )  # fmt: skip
    inlines = [RoundInline]

    @admin.display(description="Contribution ledger")
    def contribution_ledger(self, campaign: Campaign) -> str:
        """Per node totals over aggregated rounds, then every node in every round (refusals with their reason)."""
        totals = _table(
            ("node", "name", "rounds", "refused", "failed", "samples", "tokens", "compute s", "bytes up",
             "bytes down", "data value (mean)"),
            [(t.node, t.name, t.rounds, t.refused, t.failed, t.samples, t.tokens, _num(t.seconds, 1), t.bytes_up,
              t.bytes_down, _num(t.data_value)) for t in ledger_totals(campaign)],
        )  # fmt: skip
        rounds = _table(
            ("round", "node", "samples", "tokens", "compute s", "bytes up", "bytes down", "update norm",
             "data value", "refused / error"),
            [(p.round.number, p.node.pseudonym, p.samples, p.tokens, _num(p.seconds, 1), p.bytes_up, p.bytes_down,
              _num(p.update_norm, 4), _num(p.data_value), p.rejected_reason or p.error or "")
             for p in ledger_entries(campaign)],
        )  # fmt: skip
        return format_html("{}<p>Data value: {}.</p>{}", totals, DATA_VALUE, rounds)


@admin.register(Participation)
class ParticipationAdmin(admin.ModelAdmin):
    list_display = (
        "round", "node", "samples", "tokens", "train_loss", "val_loss_after", "seconds", "data_value",
        "rejected_reason", "error",
    )  # fmt: skip
    list_filter = ("round__campaign",)


@admin.register(NodeFlag)
class NodeFlagAdmin(admin.ModelAdmin):
    """Nodes whose updates the server refused; staff decide what to do (e.g. suspend the node)."""

    list_display = ("node", "reason", "created_at", "resolved_at")
    list_filter = (("resolved_at", admin.EmptyFieldListFilter), "participation__round__campaign")
    readonly_fields = ("node", "participation", "reason", "created_at")
    actions = ["resolve"]

    @admin.action(description="Mark as looked at (resolved)")
    def resolve(self, request, queryset) -> None:
        queryset.filter(resolved_at=None).update(resolved_at=timezone.now())
