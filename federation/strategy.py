"""Flower's own strategies, wrapped to validate each node's update first and to keep a per-round log.

`GuardedStrategy` sits in front of any Flower Message-API strategy (FedAvg, FedMedian, FedTrimmedAvg,
MultiKrum, or one of those inside Flower's DP wrapper): it checks every reply against the global arrays the
round started from, records why a reply was refused, hands only acceptable replies to the wrapped strategy,
and scores each accepted node by how well its update lines up with the update the round actually applied.

It is also where the wire form meets the strategies' form (federation.packing): instructions leave as one packed
array in the campaign's transfer dtype, and every reply is unpacked to float32 per-tensor arrays first thing, so
validation, the wrapped strategy (DP wrapper included) and the ServerApp's evaluation see today's float32 form.

The campaign's LoRA variant (federation.lora_variants) says which of the global's tensors a reply carries: all of
them ("lora"), or the trained lora_B half ("ffa"). Everything a reply meets here (the layout check, the norm and
ratio rules, DP clipping, the wrapped strategy) sees that subset only; the merged adapter is the global's frozen
tensors unchanged plus the merged trained ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, MultiKrum, Strategy

from federation import events, privacy
from federation.config import NODES_IN_ROUND, AggregationConfig
from federation.lora_variants import LORA_MERGE, check_variant, is_frozen, trained_keys
from federation.packing import LAYOUT_KEY, PackingError, pack_records, unpack_content
from federation.server_optimizer import ServerOptimizer
from federation.validation import Verdict, check_update, cosine, ratio_outliers, update_vector

WEIGHT_KEY = events.NUM_EXAMPLES  # what nodes report as their sample count; FedAvg weights by it (capped)
UNIT_WEIGHT_KEY = "unit-weight"  # DP: Flower's accountant requires equal weights (sensitivity is clip / n)
DATA_VALUE = "cosine alignment of the node's update with the update the round applied (new global - old global)"


@dataclass
class NodeReport:
    node_id: int  # Flower's node id on the SuperLink
    name: str
    fingerprint: str
    metrics: dict[str, float | None]
    error: str = ""  # the node failed; nothing came back
    rejected: str = ""  # the reply came back but failed validation; it was not aggregated
    update_norm: float | None = None  # L2 norm of (reply - global)
    data_value: float | None = None  # see DATA_VALUE; None when rejected or nothing was applied
    weight: float | None = None  # the weight the merge gave it: its claimed num-examples after the caps


@dataclass
class RoundLog:
    replies: list[NodeReport] = field(default_factory=list)
    train_metrics: dict[str, float | None] = field(default_factory=dict)
    epsilon: float | None = None  # cumulative, after this round (central DP only)
    delta: float | None = None
    # Wall-clock times (epoch seconds) on the SuperLink host: instructions out, all replies in, merge done.
    sent_at: float | None = None
    replies_at: float | None = None
    aggregated_at: float | None = None


def _clean(value: Any) -> float | None:
    """JSON has no NaN/inf: report them as null."""
    value = float(value)
    return value if math.isfinite(value) else None


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: array.numpy() for key, array in record.items()}


def _scalar_metrics(msg: Message) -> dict[str, float]:
    merged: dict[str, float] = {}
    for record in msg.content.metric_records.values():
        merged.update({k: float(v) for k, v in record.items() if not isinstance(v, list)})
    return merged


def _report(msg: Message) -> tuple[NodeReport, list[str]]:
    """What the node says about itself, kept only within `federation.events` bounds, and what broke them."""
    node = msg.content.config_records.get("node")
    metrics, problems = events.check_metrics(_scalar_metrics(msg))
    fingerprint = str(node["fingerprint"]) if node and "fingerprint" in node else ""
    if len(fingerprint) > 64 or any(c not in "0123456789abcdef" for c in fingerprint):
        problems.append(f"fingerprint {events.cut(fingerprint, 80)!r} is not a sha256 hex digest")
        fingerprint = ""
    report = NodeReport(
        node_id=int(msg.metadata.src_node_id),
        name=events.cut(str(node["name"]) if node and "name" in node else "", events.MAX_NAME),
        fingerprint=fingerprint,
        metrics=metrics,
    )
    return report, problems


def _check(
    msg: Message,
    reference: dict[str, np.ndarray],
    max_norm: float,
    problems: list[str],
    transfer_dtype: str,
    lora_variant: str = "lora",
) -> Verdict:
    """The reply's shape as a Flower message, its reported numbers, then its tensors; a reply that cannot even be
    read, or whose metrics break their bounds (see federation.events), is refused.

    The packed adapter is unpacked against the round's global adapter (names, shapes, length, digest, wire dtype,
    finite values) and, once it passes, the message carries float32 per-tensor arrays instead, as the strategies
    expect. `reference` holds only the tensors the campaign's LoRA variant trains: a reply carries exactly those."""
    if len(msg.content.array_records) != 1:
        return Verdict(f"expected one ArrayRecord, got {len(msg.content.array_records)}")
    weight = _scalar_metrics(msg).get(WEIGHT_KEY)
    if weight is None or not math.isfinite(weight) or weight <= 0:
        return Verdict(f"metrics lack a positive, finite {WEIGHT_KEY}")
    if problems:
        return Verdict("reported metrics out of bounds: " + "; ".join(problems))
    try:
        arrays = unpack_content(msg.content, {k: v.shape for k, v in reference.items()}, transfer_dtype)
    except PackingError as exc:
        return Verdict(f"packed adapter refused: {exc}{_variant_hint(msg, lora_variant, exc)}")
    for key in [*msg.content.array_records, LAYOUT_KEY]:
        del msg.content[key]
    msg.content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return check_update(arrays, reference, max_norm)


def _variant_hint(msg: Message, lora_variant: str, error: PackingError) -> str:
    """Why a reply's tensor set is wrong under a variant that freezes some, in words beside the layout check's own
    reason: a node on plain LoRA (or on older code) sends the frozen tensors too."""
    if lora_variant == "lora":
        return ""
    record = msg.content.config_records.get(LAYOUT_KEY)
    names = record.get("names") if record is not None else None
    frozen = [n for n in names if isinstance(n, str) and is_frozen(n, lora_variant)] if isinstance(names, list) else []
    if not frozen and not str(error).startswith("missing tensors"):
        return ""
    carries = (
        f"; this reply carries {len(frozen)} frozen tensor(s), e.g. {events.cut(frozen[0], 120)}" if frozen else ""
    )
    return (
        f" (lora-variant {lora_variant}: a reply carries only the trained lora_B tensors, lora_A stays as the "
        f"server sent it{carries})"
    )


def _stand_in(reference: dict[str, np.ndarray]) -> ArrayRecord:
    """A (near-)zero update for a refused reply under DP: the global arrays with one element moved a hair.

    Exactly zero would do, but Flower's clipping divides by the update's norm (ZeroDivisionError on 0).
    """
    arrays = {k: v.copy() for k, v in reference.items()}
    first = next((a for a in arrays.values() if a.size), None)
    if first is not None:
        flat = first.reshape(-1)
        # At least 1e-12: the smallest step from 0.0 would square to 0.0 in float32 and leave the norm at 0.
        flat[0] = flat[0] + max(np.spacing(abs(flat[0])), flat.dtype.type(1e-12))
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


class GuardedStrategy(Strategy):
    """Validate, record, then delegate to `inner` (any Flower Message-API strategy) unchanged.

    `keep_sample_size`: a refused reply is replaced by a (near-)zero update instead of being dropped, because
    Flower's DP accounting needs exactly the sampled number of replies each round; a zero update is within any
    clipping bound, so the privacy analysis still holds.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        max_update_norm: float = 0.0,
        max_norm_ratio: float = 0.0,
        max_examples: int = events.MAX_EXAMPLES,
        max_weight_ratio: float = 0.0,
        keep_sample_size: bool = False,
        weight_key: str = WEIGHT_KEY,
        transfer_dtype: str = "float32",
        optimizer: ServerOptimizer | None = None,
        lora_variant: str = "lora",
    ) -> None:
        self.inner = inner
        # The server's step after the merge (federation.server_optimizer); None: the merge is the new global.
        self.optimizer = optimizer
        self.transfer_dtype = transfer_dtype  # how adapters travel both ways (federation.packing)
        self.lora_variant = check_variant(lora_variant)  # which tensors replies carry (federation.lora_variants)
        self.max_update_norm = max_update_norm
        self.max_norm_ratio = max_norm_ratio
        self.max_examples = max_examples
        self.max_weight_ratio = max_weight_ratio
        self.keep_sample_size = keep_sample_size
        self.weight_key = weight_key  # the key the wrapped strategy weights by
        self.rounds: dict[int, RoundLog] = {}
        self._global = ArrayRecord()
        self._sent_at: float | None = None
        self._sent: list[Message] = []  # this round's instructions (Flower gives each its message id as it sends)
        # Flower node id -> its contributor (from the site, never from a node): one vote per contributor.
        self.owners: dict[int, str] = {}

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays  # what every reply this round is compared with, in float32
        self._sent_at = time.time()
        # The wrapped strategy configures with the float32 per-tensor arrays (the DP wrapper keeps them to clip
        # replies against); only then does what travels become one packed array in the transfer dtype.
        # It sees only the tensors the LoRA variant trains (the DP wrapper clips replies against those).
        self._sent = list(self.inner.configure_train(server_round, self._trained(arrays), config, grid))
        if self._sent:
            packed, layout = pack_records(_numpy(arrays), self.transfer_dtype)
            for msg in self._sent:  # Flower's strategies share one RecordDict among the round's messages
                for key in list(msg.content.array_records):
                    del msg.content[key]
                msg.content["arrays"], msg.content[LAYOUT_KEY] = packed, layout
                # How many nodes this round averages: each scales its learning rate by it (TrainConfig.round_lr).
                msg.content["config"][NODES_IN_ROUND] = len(self._sent)
        return self._sent

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        log = RoundLog(sent_at=self._sent_at, replies_at=time.time())
        reference = _numpy(self._trained(self._global))  # what replies carry: the trained tensors
        checked: list[tuple[NodeReport, Message]] = []
        replies = list(replies)
        # An error can come from the SuperLink itself ("Node Unavailable", sent by node 1) rather than from the
        # node: it belongs to the node the instruction it answers went to.
        sent_to = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in self._sent if m.metadata.message_id}

        def node_of(msg: Message) -> int:
            return sent_to.get(msg.metadata.reply_to_message_id, int(msg.metadata.src_node_id))

        # Flower may hand over more than one error for a node (its app process timed out, then its SuperNode
        # gave up): a node counts once, and a real reply from it outweighs its errors.
        answered = {node_of(m) for m in replies if not m.has_error()}
        for msg in replies:
            if msg.has_error():
                node_id = node_of(msg)
                if node_id not in answered:
                    answered.add(node_id)
                    log.replies.append(NodeReport(node_id, "", "", {}, error=str(msg.error.reason)))
                continue
            report, problems = _report(msg)
            verdict = _check(msg, reference, self.max_update_norm, problems, self.transfer_dtype, self.lora_variant)
            report.update_norm, report.rejected = verdict.norm, verdict.reason
            log.replies.append(report)
            checked.append((report, msg))
        # A node that never answered (it dropped, or its reply was lost) is a failure of this round, not a silence:
        # Flower hands over only the replies that came back before the round timeout.
        for node_id in (int(m.metadata.dst_node_id) for m in self._sent):
            if node_id not in answered:
                log.replies.append(NodeReport(node_id, "", "", {}, error="no reply before the round timeout"))
        # The ratio rule compares updates with each other, so it runs once all are in.
        norms = {i: r.update_norm for i, (r, _) in enumerate(checked) if not r.rejected and r.update_norm is not None}
        for i, reason in ratio_outliers(norms, self.max_norm_ratio).items():
            checked[i][0].rejected = reason

        accepted = [(r, m) for r, m in checked if not r.rejected]
        self._cap_weights([r for r, _ in accepted])
        updates = {id(r): update_vector(_numpy(next(iter(m.content.array_records.values()))), reference)
                   for r, m in accepted}  # fmt: skip
        log.train_metrics = self._train_metrics([r for r, _ in accepted])
        forwarded = []
        for report, msg in checked:
            if report.rejected and not self.keep_sample_size:
                continue
            if report.rejected:
                for key in list(msg.content.array_records):
                    del msg.content[key]
                msg.content["arrays"] = _stand_in(reference)
            # A refused reply under DP carries the zero stand-in: its weight is 1 like every other (unit weights).
            weight = 1.0 if self.weight_key == UNIT_WEIGHT_KEY else float(report.weight or 0.0)
            # Only the weight goes on: node metrics are already logged, and Flower insists every reply carry
            # the same metric keys, which a hostile or older node need not respect.
            for key in list(msg.content.metric_records):
                del msg.content[key]
            msg.content["metrics"] = MetricRecord({self.weight_key: weight})
            forwarded.append((report.node_id, msg))

        merged = [m for _, m in forwarded] if self.keep_sample_size else self._one_vote_per_owner(forwarded)

        arrays, _ = self.inner.aggregate_train(server_round, merged) if merged else (None, None)
        arrays = self._with_frozen(arrays)
        if arrays is not None and self.optimizer is not None:
            # Post-processing of whatever the inner strategy merged (under DP: of the noised mean, which keeps the
            # guarantee and Flower's accountant as they are). Before data_value: it measures the update applied.
            # On the whole adapter: under ffa, A's update is zero, so every optimizer leaves it where it is.
            arrays = self.optimizer.step(self._global, arrays)
        if arrays is not None:
            applied = update_vector(_numpy(arrays), reference)
            for report, _ in accepted:
                report.data_value = cosine(updates[id(report)], applied)
        spent = privacy.spent(self.inner)
        if spent is not None:
            log.epsilon, log.delta = _clean(spent.epsilon), spent.delta
        log.aggregated_at = time.time()
        self.rounds[server_round] = log
        metrics = MetricRecord({k: v for k, v in log.train_metrics.items() if v is not None})
        return arrays, (metrics if arrays is not None else None)

    def _trained(self, arrays: ArrayRecord) -> ArrayRecord:
        """The tensors of `arrays` the campaign's LoRA variant trains (all of them for plain LoRA)."""
        keys = trained_keys(arrays, self.lora_variant)
        return arrays if len(keys) == len(arrays) else ArrayRecord({k: arrays[k] for k in keys})

    def _with_frozen(self, merged: ArrayRecord | None) -> ArrayRecord | None:
        """The merged trained tensors completed with the round's global frozen ones, in the global's order.

        FFA-LoRA: the global A (unchanged since its initialisation) and the merged B, so B·A is the exact (weighted)
        mean of the nodes' B_i·A.
        """
        if merged is None or len(merged) == len(self._global):
            return merged
        return ArrayRecord({k: merged[k] if k in merged else self._global[k] for k in self._global})

    def _one_vote_per_owner(self, replies: list[tuple[int, Message]]) -> list[Message]:
        """The accepted replies of one contributor's nodes become one: their weighted mean, with their summed weight.

        FedAvg's merge is unchanged by this (a weighted mean of weighted means), while robust strategies (median,
        trimmed mean, Krum) see one vote per contributor: enrolling more nodes buys no more votes.
        Nodes the site did not name keep a vote each. Never under DP, whose accounting needs exactly the sampled
        number of replies (the caller skips it there).
        """
        groups: dict[str, list[Message]] = {}
        out: list[Message] = []
        for node_id, msg in replies:
            owner = self.owners.get(int(node_id))
            if owner is None:
                out.append(msg)
            else:
                groups.setdefault(owner, []).append(msg)
        for msgs in groups.values():
            if len(msgs) == 1:
                out.append(msgs[0])
                continue
            weights = [float(m.content["metrics"][self.weight_key]) for m in msgs]
            total = sum(weights)
            shares = [w / total for w in weights] if total > 0 else [1.0 / len(msgs)] * len(msgs)
            arrays = [_numpy(next(iter(m.content.array_records.values()))) for m in msgs]
            mean = {
                k: sum(s * a[k].astype(np.float64) for s, a in zip(shares, arrays, strict=True)).astype(
                    arrays[0][k].dtype
                )
                for k in arrays[0]
            }
            first = msgs[0]
            for key in list(first.content.array_records) + list(first.content.metric_records):
                del first.content[key]
            first.content["arrays"] = ArrayRecord({k: Array(v) for k, v in mean.items()})
            first.content["metrics"] = MetricRecord({self.weight_key: total})
            out.append(first)
        return out

    def _cap_weights(self, reports: list[NodeReport]) -> None:
        """Each accepted node's weight: its claimed sample count, which nobody can check, bounded twice.

        At most `max_examples`, and at most `max_weight_ratio` times the round's lower median claim (the median
        of an even count taken low, so that with two nodes neither can outweigh the other more than the ratio).
        A node claiming 1e12 samples then weighs no more than a few honest ones. The caps apply before any
        strategy sees the replies, so FedAvg, MultiKrum's average and the merged train metrics all use them;
        FedMedian and FedTrimmedAvg ignore weights, and DP uses unit weights anyway.
        """
        claims = sorted(float(r.metrics.get(WEIGHT_KEY) or 0.0) for r in reports)
        cap = float(self.max_examples)
        if self.max_weight_ratio > 0 and claims:
            cap = min(cap, self.max_weight_ratio * claims[(len(claims) - 1) // 2])
        for report in reports:
            report.weight = min(float(report.metrics.get(WEIGHT_KEY) or 0.0), cap)

    @staticmethod
    def _train_metrics(reports: list[NodeReport]) -> dict[str, float | None]:
        """Weighted mean (capped weights, as the merge used) of every metric all accepted nodes reported.

        Each value is within its bound, but a weighted sum of large ones can still overflow: non-finite -> None.
        """
        if not reports:
            return {}
        weights = [float(r.weight or 0.0) for r in reports]
        total = sum(weights) or 1.0
        keys = set.intersection(*(set(r.metrics) for r in reports)) - {WEIGHT_KEY}
        merged: dict[str, float | None] = {}
        for key in sorted(keys):
            values = [r.metrics[key] for r in reports]
            merged[key] = (
                None
                if any(v is None for v in values)
                else _clean(sum(w * v for w, v in zip(weights, values, strict=True)) / total)
            )
        return merged


def build_strategy(
    cfg: AggregationConfig,
    min_nodes: int,
    nodes_per_round: int = 0,
    transfer_dtype: str = "float32",
    lora_variant: str = "lora",
) -> GuardedStrategy:
    """The campaign's strategy: one of Flower's, optionally inside Flower's central-DP wrapper, then guarded.

    `lora_variant` (TrainConfig's): which adapter tensors replies carry and the strategy merges.

    A round starts once `min_nodes` are connected. It trains every connected node, or, with `nodes_per_round` K,
    K of them drawn at random (Flower's sampling: a large community need not all train every round).
    """
    # Flower samples max(int(connected x fraction_train), min_train_nodes): a tiny fraction means exactly K.
    sample = nodes_per_round or (min_nodes if cfg.dp else 0)
    # Nodes report their own validation loss inside the train reply: no federated evaluation round.
    common: dict[str, Any] = {
        "fraction_train": 1e-9 if sample else 1.0,
        "fraction_evaluate": 0.0,
        "min_train_nodes": sample or min_nodes,
        "min_available_nodes": max(min_nodes, sample),
    }
    if cfg.dp:
        # Exactly `sample` nodes are drawn: the accountant is told that number and checks it each round.
        base = FedAvg(**common, weighted_by_key=UNIT_WEIGHT_KEY)
        return GuardedStrategy(
            privacy.dp_wrap(base, cfg, sample),
            max_update_norm=cfg.max_update_norm,
            max_norm_ratio=cfg.max_norm_ratio,
            max_examples=cfg.max_examples,
            max_weight_ratio=cfg.max_weight_ratio,
            keep_sample_size=True,
            weight_key=UNIT_WEIGHT_KEY,
            transfer_dtype=transfer_dtype,
            optimizer=ServerOptimizer.from_config(cfg),
            lora_variant=lora_variant,
        )
    inner: Strategy
    if cfg.strategy == "fedmedian":
        inner = FedMedian(**common)
    elif cfg.strategy == "fedtrimmedavg":
        inner = FedTrimmedAvg(**common, beta=cfg.trim_beta)
    elif cfg.strategy == "multikrum":
        select = cfg.krum_select or max(1, (sample or min_nodes) - cfg.krum_malicious)
        inner = MultiKrum(**common, num_malicious_nodes=cfg.krum_malicious, num_nodes_to_select=select)
    else:
        inner = FedAvg(**common)
    return GuardedStrategy(
        inner,
        max_update_norm=cfg.max_update_norm,
        max_norm_ratio=cfg.max_norm_ratio,
        max_examples=cfg.max_examples,
        max_weight_ratio=cfg.max_weight_ratio,
        transfer_dtype=transfer_dtype,
        optimizer=ServerOptimizer.from_config(cfg),
        lora_variant=lora_variant,
    )


def server_optimizer_text(cfg: AggregationConfig) -> str:
    """The server's step in words (model cards, provenance); empty when the merge is applied as it is."""
    if not cfg.server_step:
        return ""
    if cfg.server_optimizer == "sgd":
        momentum = f" and momentum {cfg.server_momentum:g}" if cfg.server_momentum else ""
        return f"server SGD with learning rate {cfg.server_lr:g}{momentum} (Flower FedAvgM's rule)"
    name, flower = {"adam": ("Adam", "FedAdam"), "yogi": ("Yogi", "FedYogi")}[cfg.server_optimizer]
    return (
        f"server {name} (Flower {flower}'s rule; eta {cfg.server_lr:g}, beta1 {cfg.server_beta1:g}, "
        f"beta2 {cfg.server_beta2:g}, tau {cfg.server_tau:g})"
    )


def describe(cfg: AggregationConfig, lora_variant: str = "lora") -> dict[str, Any]:
    """For provenance and model cards: what merged the updates, in words and numbers.

    `lora_variant` (TrainConfig's) says how the adapter's factors were merged: "lora_merge", also part of "method".
    """
    names = {
        "fedavg": "FedAvg weighted by samples (each node's claim capped at "
        + (f"{cfg.max_weight_ratio:g}x the round's median claim and " if cfg.max_weight_ratio else "")
        + f"{cfg.max_examples})",
        "fedmedian": "FedMedian (coordinate-wise median)",
        "fedtrimmedavg": f"FedTrimmedAvg (trimmed mean, beta={cfg.trim_beta})",
        "multikrum": f"MultiKrum (f={cfg.krum_malicious})",
    }
    text = names[cfg.strategy] + " (flwr.serverapp.strategy)"
    if cfg.dp:
        text = (
            f"FedAvg with equal weights under central differential privacy "
            f"(server-side fixed clipping at {cfg.dp_clipping_norm:g}, noise multiplier {cfg.dp_noise_multiplier:g}, "
            "flwr DifferentialPrivacyServerSideFixedClipping with RDP accounting)"
        )
    server = server_optimizer_text(cfg)
    if server:
        text += ", then " + server
    merge = LORA_MERGE[check_variant(lora_variant)]
    return {
        "method": f"{text}; {merge}",
        "lora_merge": merge,
        "data_value": DATA_VALUE,
        "server_optimizer": server or "none (the merge is the new global)",
        **cfg.to_run_config(),
    }
