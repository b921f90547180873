"""provenance.json: where a released adapter came from, in enough detail to check it."""

from __future__ import annotations

import subprocess
from dataclasses import asdict
from importlib.metadata import version
from typing import Any

from django.conf import settings

from campaigns.models import Campaign
from campaigns.selectors import attempt_record, campaign_attempts, ledger_totals
from federation.artifacts import ADAPTER_FILES
from federation.config import AggregationConfig, EvaluationConfig, TrainConfig
from federation.strategy import DATA_VALUE, describe


def code_version() -> dict[str, str]:
    try:
        commit = subprocess.run(
            ["git", "-C", str(settings.REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    packages = {name: version(name) for name in ("flwr", "torch", "transformers", "peft", "safetensors")}
    return {"bayanihan_commit": commit or "unknown", **packages}


def _privacy(cfg: AggregationConfig, rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Central DP as released: epsilon is cumulative over every released round, at the stated delta."""
    if not cfg.dp:
        return None
    last = next((r for r in reversed(rounds) if r["epsilon"] is not None), None)
    return {
        "mechanism": "central DP, server-side fixed clipping + Gaussian noise (Flower), RDP accounting",
        "epsilon": last["epsilon"] if last else None,
        "delta": last["delta"] if last else cfg.dp_delta,
        "noise_multiplier": cfg.dp_noise_multiplier,
        "clipping_norm": cfg.dp_clipping_norm,
        "unit": "one node's whole contribution to a round (client-level, add-or-remove-one)",
    }


def campaign_provenance(campaign: Campaign, files: dict[str, str], repo_id: str = "") -> dict[str, Any]:
    """`files`: released file name -> sha256 (every file but provenance.json itself). `repo_id` is signed with the
    rest, so `verify` can tell a release of this repository from another's."""
    base = campaign.base_model
    aggregation = AggregationConfig.from_run_config(campaign.aggregation)
    # How the adapter's factors were merged depends on the LoRA variant the nodes trained (TrainConfig's).
    merging = describe(aggregation, TrainConfig.from_run_config(campaign.train_config).lora_variant)
    rounds = []
    for round_ in campaign.rounds.order_by("number").prefetch_related("participations__node"):
        rounds.append(
            {
                "round": round_.number,
                "eval_loss": round_.eval_loss,
                "eval_perplexity": round_.eval_perplexity,
                # The campaign's generation metrics over `task_records` held-out records, and per held-out group
                # (e.g. a language) its loss, tokens, records and metrics (federation.events.HeldoutScores).
                "task_metrics": round_.task_metrics,
                "task_records": round_.task_records,
                "groups": round_.group_metrics,
                "train_loss": round_.train_loss,
                "bytes_up": round_.bytes_up,
                "bytes_down": round_.bytes_down,
                "duration_s": round_.duration_s,
                "rejected": round_.rejected,
                "epsilon": round_.epsilon,
                "delta": round_.delta,
                # The adapter only: the server optimizer's state is stored for resuming, never released.
                "merged_adapter_sha256": {n: sha for n, sha in round_.adapter_files.items() if n in ADAPTER_FILES},
                "nodes": [
                    {
                        "node": p.node.pseudonym,
                        "data_fingerprint": p.data_fingerprint,
                        "samples": p.samples,
                        "tokens": p.tokens,
                        "train_loss": p.train_loss,
                        "val_loss_before": p.val_loss_before,
                        "val_loss_after": p.val_loss_after,
                        "seconds": p.seconds,
                        "bytes_up": p.bytes_up,
                        "bytes_down": p.bytes_down,
                        "update_norm": p.update_norm,
                        "data_value": p.data_value,
                        "error": p.error or None,
                        "rejected": p.rejected_reason or None,
                    }
                    for p in sorted(round_.participations.all(), key=lambda p: p.node.pseudonym)
                ],
            }
        )
    return {
        "schema": "bayanihan.provenance/1",
        "repo_id": repo_id,
        "base_model": {
            "id": base.hf_id,
            "license": base.license,
            "note": base.note,
            "files_sha256": base.files,
        },
        "code": code_version(),
        "campaign": {
            "id": campaign.pk,
            "name": campaign.name,
            "data_task": campaign.data_task,
            "num_rounds": campaign.num_rounds,
            "min_nodes": campaign.min_nodes,
            "nodes_per_round": campaign.nodes_per_round,
            "round_timeout_s": campaign.round_timeout,
            "transfer_dtype": campaign.transfer_dtype,  # on the wire; merged in float32 on the server
            "aggregation": merging["method"],
            "lora_merge": merging["lora_merge"],
            "server_optimizer": merging["server_optimizer"],
            "aggregation_config": aggregation.to_run_config(),
            "train_config": campaign.train_config,
            "evaluation_config": EvaluationConfig.from_run_config(campaign.evaluation).to_run_config(),
            "flower_run_id": campaign.flwr_run_id,
            "launched_at": campaign.launched_at.isoformat() if campaign.launched_at else None,
            "max_attempts": campaign.max_attempts,
        },
        "rounds": rounds,
        # Each Flower run the rounds came from: a resumed run continued from `from_round`'s merged adapter.
        "attempts": [attempt_record(a) for a in campaign_attempts(campaign)],
        "privacy": _privacy(aggregation, rounds),
        "contribution_ledger": {
            "data_value": DATA_VALUE,
            # Pseudonyms only: the name a node gives itself may identify its owner.
            "nodes": [{k: v for k, v in asdict(t).items() if k != "name"} for t in ledger_totals(campaign)],
        },
        "files_sha256": files,
    }
