"""Hyperparameters as run config, not constants (Flower run config uses dashed keys)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from federation.events import MAX_EXAMPLES, MAX_TASK_RECORDS, TASK_METRICS
from federation.lora_variants import LORA_VARIANTS


def _to_key(name: str) -> str:
    return name.replace("_", "-")


class ConfigError(ValueError):
    """Run-config values that cannot be used; `problems` lists each one (key first), `str()` joins them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


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
                try:
                    values[f.name] = caster(config[key])
                except (TypeError, ValueError) as exc:
                    raise ConfigError([f"{key} must be a {f.type}, not {config[key]!r}"]) from exc
        return cls(**values)

    def to_run_config(self) -> dict[str, Any]:
        return {_to_key(k): v for k, v in asdict(self).items()}  # type: ignore[call-overload]


# When a node measures its validation loss (on its own held-back split) around its local training: `after` (the
# default) only after training, `both` also before (the before/after pair shows what the round did for that node's
# data, at twice the cost), `none` never. It is a per-node sanity number; the campaign's quality measure is the
# server's held-out evaluation of every merged round.
NODE_VALIDATION = ("after", "both", "none")
MAX_EVAL_RECORDS = 10_000
MAX_LR_SCALE = 64.0
# The round's instructions carry how many nodes train in it (the server's sampling; see TrainConfig.max_lr_scale).
NODES_IN_ROUND = "nodes-in-round"
MAX_NODES_IN_ROUND = 1_000_000


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
    # The node's validation sample: at most this many records of its validation split. 8 forward passes cost about
    # what 0.7 training steps of batch 4 do (a step is a forward and a backward pass over 4 records), so validating
    # once adds ~7 % to 10 local steps. The number is each node's own progress signal and decides nothing (the
    # server's held-out evaluation is the campaign's measure); 16 records measured 10 % of bench-overhead's round.
    max_eval_records: int = 8
    node_validation: str = "after"  # one of NODE_VALIDATION
    threads: int = 0  # torch intra-op threads per app process; 0 keeps torch's default
    # One of LORA_VARIANTS (federation.lora_variants): "lora" trains and averages A and B; "ffa" (FFA-LoRA) keeps
    # A at its initialisation and trains, sends and averages B only, which makes the merge exact.
    lora_variant: str = "lora"
    # The linear scaling rule, bounded: a round that averages K nodes' updates moves about as far as one node's, so
    # each node trains at lr x min(K, max-lr-scale) (K comes with the round's instructions: NODES_IN_ROUND). 1 turns
    # it off. `make bench-quality` (3 nodes): lr x 3 beat lr x 1 and lr x 6; above a few nodes the rule is untested
    # and AdamW diverges somewhere past x 6 there, hence the bound.
    max_lr_scale: float = 4.0

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
        if not 0 <= self.max_eval_records <= MAX_EVAL_RECORDS:
            problems.append(f"max-eval-records must be in [0, {MAX_EVAL_RECORDS}]")
        if self.node_validation not in NODE_VALIDATION:
            problems.append(f"node-validation must be one of {', '.join(NODE_VALIDATION)}")
        if self.lora_variant not in LORA_VARIANTS:
            problems.append(f"lora-variant must be one of {', '.join(LORA_VARIANTS)}")
        if not 1.0 <= self.max_lr_scale <= MAX_LR_SCALE:
            problems.append(f"max-lr-scale must be in [1, {MAX_LR_SCALE:g}] (1: no scaling)")
        elif 0.0 < self.lr < 1.0 and not self.lr * self.max_lr_scale < 1.0:
            problems.append("max-lr-scale x lr must stay below 1")
        if problems:
            raise ConfigError(problems)

    def round_lr(self, round_config: Mapping[str, Any]) -> float:
        """This round's learning rate on a node: lr x min(nodes in the round, max-lr-scale).

        The count comes from the server; a missing or out-of-bounds one (an older server, a garbled message) counts
        as 1, so nothing in a message can push a node's learning rate past lr x max-lr-scale."""
        try:
            nodes = int(round_config.get(NODES_IN_ROUND, 1))
        except (TypeError, ValueError):
            nodes = 1
        if not 1 <= nodes <= MAX_NODES_IN_ROUND:
            nodes = 1
        return self.lr * min(float(nodes), self.max_lr_scale)

    @property
    def modules(self) -> list[str]:
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]


@dataclass
class ServerConfig(RunConfigMixin):
    """The ServerApp's numbers, sent as run config. Every node receives the run config (context.run_config), so
    nothing secret and no server path belongs here: those come from the site (ServerPaths), fetched with the link
    secret the SuperLink host holds (federation.report.SiteLink)."""

    campaign_id: int = 0
    num_rounds: int = 2
    min_nodes: int = 2
    nodes_per_round: int = 0  # 0: every connected node trains each round; K: K of them, drawn at random
    round_timeout: float = 3600.0
    max_heldout_records: int = 64
    # Resuming after an infrastructure failure: the last merged round this run continues from (0: a fresh start).
    # The ServerApp downloads that round's adapter from the site; Flower's strategy still counts from 1, so
    # campaign round = start_round + Flower's round. Not a secret: a round number.
    start_round: int = 0


@dataclass(frozen=True)
class ServerPaths:
    """What the ServerApp gets from the site only (never the run config, which every node receives): where it finds
    its inputs and writes its outputs on the SuperLink host, and which contributor each enrolled node belongs to
    (an opaque key per contributor), so that robust strategies count one vote per contributor, not per node."""

    base_model_path: str
    heldout_path: str
    output_dir: str
    node_owners: Mapping[str, str] = field(default_factory=dict)  # Flower node id (str) -> contributor key

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ServerPaths:
        paths = [f.name for f in fields(cls) if f.name != "node_owners"]
        missing = [name for name in paths if not isinstance(body.get(_to_key(name)), str)]
        if missing:
            raise ValueError(f"server config from the site lacks {', '.join(_to_key(m) for m in missing)}")
        owners = body.get("node-owners") or {}
        if not isinstance(owners, Mapping) or not all(isinstance(v, str) for v in owners.values()):
            raise ValueError("server config from the site: node-owners must map node ids to contributor keys")
        return cls(**{name: body[_to_key(name)] for name in paths}, node_owners={str(k): v for k, v in owners.items()})

    def to_json(self) -> dict[str, Any]:
        return {_to_key(k): v for k, v in asdict(self).items()}


MAX_TASK_NEW_TOKENS = 512


@dataclass
class EvaluationConfig(RunConfigMixin):
    """What the ServerApp measures on its held-out set each round besides the loss (read by the ServerApp only).

    `task_metrics` names generation metrics (comma-separated TASK_METRICS; empty: loss only). They are scored on
    greedy generations of at most `task_max_new_tokens` tokens for at most `task_max_records` held-out instruction
    or chat records, picked round robin over the records' groups so every group is measured. The cost is bounded
    by the two numbers: on 2 CPU cores SmolLM2-135M generates 32 x 48 tokens in well under a minute, once per round
    and once for the base model (round 0). Loss is always measured, per group when records carry one.
    """

    task_metrics: str = ""
    task_max_records: int = 32
    task_max_new_tokens: int = 48

    def __post_init__(self) -> None:
        problems = []
        unknown = [m for m in self.metrics if m not in TASK_METRICS]
        if unknown:
            problems.append(f"task-metrics: {', '.join(unknown)} unknown (choose from {', '.join(TASK_METRICS)})")
        if not 1 <= self.task_max_records <= MAX_TASK_RECORDS:
            problems.append(f"task-max-records must be in [1, {MAX_TASK_RECORDS}]")
        if not 1 <= self.task_max_new_tokens <= MAX_TASK_NEW_TOKENS:
            problems.append(f"task-max-new-tokens must be in [1, {MAX_TASK_NEW_TOKENS}]")
        if problems:
            raise ConfigError(problems)

    @property
    def metrics(self) -> list[str]:
        """The named metrics, each once, in TASK_METRICS order when known."""
        names = list(dict.fromkeys(m.strip() for m in self.task_metrics.split(",") if m.strip()))
        return sorted(names, key=lambda m: TASK_METRICS.index(m) if m in TASK_METRICS else len(TASK_METRICS))


TRANSFER_DTYPES = ("float32", "float16", "bfloat16")  # how adapters travel (federation.packing)


@dataclass
class WireConfig(RunConfigMixin):
    """How the adapter travels, both ways (federation.packing): read by the ServerApp and by every ClientApp.

    float32 is exact; float16 and bfloat16 halve the bytes (float16 keeps more digits, bfloat16 more range). The
    server merges in float32 whatever travels.
    """

    transfer_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.transfer_dtype not in TRANSFER_DTYPES:
            raise ConfigError([f"transfer-dtype must be one of {', '.join(TRANSFER_DTYPES)}"])


STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "multikrum")
# The server's step after the merge (federation.server_optimizer): Flower's FedAvgM, FedAdam or FedYogi rule.
SERVER_OPTIMIZERS = ("sgd", "adam", "yogi")


@dataclass
class AggregationConfig(RunConfigMixin):
    """How the server checks and merges node updates, and whether it adds central differential privacy.

    Chosen per campaign; the ServerApp alone reads it. Defaults are FedAvg with two bounds no honest node
    notices: an update above 5x the round's median norm is refused, and a node's weight (its claimed sample
    count, which nobody can check) is capped, so one node cannot make the merge its own update.
    """

    strategy: str = "fedavg"  # one of STRATEGIES: Flower's own Message-API strategies
    trim_beta: float = 0.25  # FedTrimmedAvg: fraction of updates cut from each tail, per coordinate
    krum_malicious: int = 1  # MultiKrum: f, how many hostile nodes to tolerate
    krum_select: int = 0  # MultiKrum: updates averaged after selection; 0 = min-nodes - krum-malicious
    max_update_norm: float = 0.0  # reject an update (reply - global) whose L2 norm exceeds this; 0 = no bound
    max_norm_ratio: float = 5.0  # reject an update above this many times the round's median norm; 0 = off
    max_examples: int = 100_000  # a node's FedAvg weight (claimed num-examples) counts as at most this many
    max_weight_ratio: float = 3.0  # ...and at most this many times the round's (lower) median claim; 0 = off
    dp_noise_multiplier: float = 0.0  # > 0 turns on central DP (server-side fixed clipping + Gaussian noise)
    dp_clipping_norm: float = 1.0  # L2 bound each update is clipped to before averaging (DP sensitivity)
    dp_delta: float = 1e-5  # the delta at which epsilon is reported
    # The server's own step, applied to whatever the merge above produced (federation.server_optimizer). These
    # defaults are the one place to change them (the app's pyproject.toml mirrors them; a test holds the two
    # together). sgd with learning rate 1 and momentum 0 would apply the merge as it is (plain FedAvg); the default
    # adds half of the previous round's move to each round's: in `make bench-quality` (docs/benchmarks.md) that,
    # with the nodes' learning-rate scaling (TrainConfig.max_lr_scale), beat every other combination tried, while
    # momentum 0.7 and 0.9, server learning rates above 1 and server Adam did worse than plain FedAvg's lr scaling.
    server_optimizer: str = "sgd"  # one of SERVER_OPTIMIZERS
    server_lr: float = 1.0  # sgd: FedAvgM's server_learning_rate; adam/yogi: FedAdam's/FedYogi's eta
    server_momentum: float = 0.5  # sgd only (adam and yogi have server-beta1 and ignore it): FedAvgM's momentum
    server_beta1: float = 0.9  # adam/yogi: first-moment decay
    server_beta2: float = 0.99  # adam/yogi: second-moment decay
    server_tau: float = 1e-3  # adam/yogi: adaptivity (added to the root of the second moment)

    def __post_init__(self) -> None:
        problems = []
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy must be one of {', '.join(STRATEGIES)}")
        if not 0.0 <= self.trim_beta < 0.5:
            problems.append("trim-beta must be in [0, 0.5)")
        if self.krum_malicious < 0:
            problems.append("krum-malicious must be >= 0")
        if self.krum_select < 0:
            problems.append("krum-select must be >= 0")
        if self.max_update_norm < 0:
            problems.append("max-update-norm must be >= 0 (0 = no bound)")
        if self.max_norm_ratio < 0 or 0 < self.max_norm_ratio <= 1:
            problems.append("max-norm-ratio must be 0 (off) or > 1")
        if not 1 <= self.max_examples <= MAX_EXAMPLES:
            problems.append(f"max-examples must be in [1, {MAX_EXAMPLES}]")
        if self.max_weight_ratio < 0 or 0 < self.max_weight_ratio < 1:
            problems.append("max-weight-ratio must be 0 (off) or >= 1")
        if self.dp_noise_multiplier < 0:
            problems.append("dp-noise-multiplier must be >= 0 (0 = no differential privacy)")
        if self.dp_clipping_norm <= 0:
            problems.append("dp-clipping-norm must be > 0")
        if not 0.0 < self.dp_delta < 1.0:
            problems.append("dp-delta must be in (0, 1)")
        if self.dp and self.strategy != "fedavg":
            # Flower's accountant only accounts uniform FedAvg over the clipped updates.
            problems.append("dp-noise-multiplier > 0 needs strategy fedavg (Flower accounts DP for FedAvg only)")
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            problems.append(f"server-optimizer must be one of {', '.join(SERVER_OPTIMIZERS)}")
        if not (math.isfinite(self.server_lr) and self.server_lr > 0):
            problems.append("server-lr must be a finite number > 0")
        if not 0.0 <= self.server_momentum < 1.0:
            problems.append("server-momentum must be in [0, 1)")
        if not 0.0 <= self.server_beta1 < 1.0:
            problems.append("server-beta1 must be in [0, 1)")
        if not 0.0 <= self.server_beta2 < 1.0:
            problems.append("server-beta2 must be in [0, 1)")
        if not (math.isfinite(self.server_tau) and self.server_tau > 0):
            problems.append("server-tau must be a finite number > 0")
        if problems:
            raise ConfigError(problems)

    @property
    def dp(self) -> bool:
        return self.dp_noise_multiplier > 0

    @property
    def server_step(self) -> bool:
        """Whether the server changes the merge at all: plain sgd (learning rate 1, no momentum) applies it as is."""
        return not (self.server_optimizer == "sgd" and self.server_lr == 1.0 and self.server_momentum == 0.0)
