"""Hyperparameters as run config, not constants (Flower run config uses dashed keys)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


def _to_key(name: str) -> str:
    return name.replace("_", "-")


class RunConfigMixin:
    """Dataclass <-> Flower run config (dashed keys, flat scalars)."""

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> Any:
        """Pick this dataclass's keys out of a (larger) run config, casting to the field types."""
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            key = _to_key(f.name)
            if key in config:
                caster = {"int": int, "float": float, "str": str}[str(f.type)]
                values[f.name] = caster(config[key])
        return cls(**values)

    def to_run_config(self) -> dict[str, Any]:
        return {_to_key(k): v for k, v in asdict(self).items()}  # type: ignore[call-overload]


@dataclass
class TrainConfig(RunConfigMixin):
    """What every node needs to train and evaluate one round; sent as Flower run config."""

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: str = "q_proj,k_proj,v_proj,o_proj"
    local_steps: int = 10
    lr: float = 1e-3
    seq_len: int = 256
    batch_size: int = 4
    seed: int = 0
    val_fraction: float = 0.1
    max_eval_records: int = 16
    threads: int = 0  # torch intra-op threads per app process; 0 keeps torch's default

    def __post_init__(self) -> None:
        problems = []
        if self.lora_r < 1:
            problems.append("lora-r must be >= 1")
        if self.lora_alpha < 1:
            problems.append("lora-alpha must be >= 1")
        if not 0.0 <= self.lora_dropout < 1.0:
            problems.append("lora-dropout must be in [0, 1)")
        if not self.modules:
            problems.append("target-modules must name at least one module")
        if self.local_steps < 1:
            problems.append("local-steps must be >= 1")
        if not 0.0 < self.lr < 1.0:
            problems.append("lr must be in (0, 1)")
        if not 8 <= self.seq_len <= 8192:
            problems.append("seq-len must be in [8, 8192]")
        if not 1 <= self.batch_size <= 512:
            problems.append("batch-size must be in [1, 512]")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append("val-fraction must be in [0, 1)")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def modules(self) -> list[str]:
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]


@dataclass
class ServerConfig(RunConfigMixin):
    """What only the ServerApp needs: paths on the SuperLink host and where to report."""

    campaign_id: int = 0
    num_rounds: int = 2
    min_nodes: int = 2
    round_timeout: float = 3600.0
    base_model_path: str = ""
    heldout_path: str = ""
    output_dir: str = ""
    report_url: str = ""
    report_token: str = ""
    max_heldout_records: int = 64
