"""Campaign setup: register a base checkpoint, create a campaign (its configuration checked), where its files live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from campaigns.models import BaseCheckpoint, Campaign
from federation.basemodel import describe_checkpoint
from federation.config import AggregationConfig, ConfigError, EvaluationConfig, TrainConfig, WireConfig

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


def campaign_output_dir(campaign: Campaign) -> Path:
    return Path(settings.DATA_DIR) / "campaigns" / str(campaign.pk)
