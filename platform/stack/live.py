"""Following a campaign from the database while it runs: rounds appear as the ServerApp reports them."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from campaigns.models import EVALUATED, Campaign, Round


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _round_table(round_: Round) -> Table | str:
    summary = (
        f"held-out loss {round_.eval_loss:.4f} (perplexity {round_.eval_perplexity:.1f})"
        if round_.eval_loss is not None and round_.eval_perplexity is not None
        else "held-out loss not finite"
    )
    names = {"chrf": "chrF", "exact-match": "exact match %"}
    for metric, value in (round_.task_metrics or {}).items():
        if value is not None:
            summary += f", {names.get(metric, metric)} {value:.1f}"
    if round_.number == 0:
        return f"[bold]round 0[/] (base model, before any training): {summary}"
    table = Table(title=f"[bold]round {round_.number}[/]: {summary}", title_justify="left")
    for col in ("node", "samples", "tokens", "train loss", "val loss before→after", "train s", "MB up/down"):
        table.add_column(col, no_wrap=True)
    for p in round_.participations.select_related("node").order_by("node__name"):
        if p.error:
            table.add_row(p.node.name, "-", "-", "-", f"[red]{p.error[:40]}", "-", "-")
            continue
        table.add_row(
            p.node.name,
            str(p.samples),
            f"{p.tokens:,}",
            f"{p.train_loss:.4f}",
            f"{_loss(p.val_loss_before)}→{_loss(p.val_loss_after)}",  # a node may validate after only, or not
            f"{p.seconds:.0f}",
            f"{p.bytes_up / 1e6:.1f}/{p.bytes_down / 1e6:.1f}",
        )
    return table


def follow_campaign(campaign: Campaign, console: Console, check: Callable[[], None], timeout: float) -> Campaign:
    """Print each round once it is evaluated (it goes on record a little earlier, when merged); return when the
    campaign is completed or failed."""
    shown: set[int] = set()
    started = time.monotonic()
    with console.status("") as status:
        while True:
            check()  # a crashed SuperLink/worker/node stops the wait with its log tail
            campaign.refresh_from_db()
            for round_ in campaign.rounds.filter(EVALUATED).order_by("number"):
                if round_.number not in shown:
                    shown.add(round_.number)
                    console.print(_round_table(round_))
            elapsed = time.monotonic() - started
            if campaign.is_terminal:
                return campaign
            if elapsed > timeout:
                raise TimeoutError(f"campaign still {campaign.status} after {timeout:.0f}s")
            waiting = len(shown) if shown else 0
            what = (
                "waiting for a worker"
                if campaign.status == Campaign.Status.QUEUED
                else (
                    "evaluating the base model"
                    if not shown
                    else f"round {waiting}/{campaign.num_rounds}: nodes training"
                )
            )
            if len(shown) > campaign.num_rounds:
                what = "publishing the release"
            status.update(f"[{elapsed:5.0f}s] campaign #{campaign.pk} {campaign.status}: {what}")
            time.sleep(1.0)
