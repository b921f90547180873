"""Flower's FedAvg, wrapped only to remember who took part in each round and what they reported."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg


@dataclass
class NodeReport:
    node_id: int  # Flower's node id on the SuperLink
    name: str
    fingerprint: str
    metrics: dict[str, float]
    error: str = ""


@dataclass
class RoundLog:
    replies: list[NodeReport] = field(default_factory=list)
    train_metrics: dict[str, float] = field(default_factory=dict)


def _clean(value: Any) -> float | None:
    """JSON has no NaN/inf: report them as null."""
    value = float(value)
    return value if math.isfinite(value) else None


class RecordingFedAvg(FedAvg):
    """FedAvg weighted by `num-examples` (samples), keeping a per-round log of node replies."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rounds: dict[int, RoundLog] = {}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)  # read twice: once here, once by FedAvg
        log = RoundLog()
        for msg in replies:
            node_id = int(msg.metadata.src_node_id)
            if msg.has_error():
                log.replies.append(NodeReport(node_id, "", "", {}, error=str(msg.error.reason)))
                continue
            node = msg.content.config_records.get("node")
            metrics = next(iter(msg.content.metric_records.values()), {})
            log.replies.append(
                NodeReport(
                    node_id=node_id,
                    name=str(node["name"]) if node else "",
                    fingerprint=str(node["fingerprint"]) if node else "",
                    metrics={k: _clean(v) for k, v in metrics.items() if not isinstance(v, list)},
                )
            )
        arrays, metrics = super().aggregate_train(server_round, replies)
        if metrics is not None:
            log.train_metrics = {k: _clean(v) for k, v in metrics.items() if not isinstance(v, list)}
        self.rounds[server_round] = log
        return arrays, metrics
