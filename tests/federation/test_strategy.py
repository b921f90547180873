"""FedAvg over adapter tensors, checked against a hand computation, and the per-node round log."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from federation.strategy import RecordingFedAvg


@pytest.fixture(autouse=True)
def _identity():
    # Messages are stamped with the running task's identity; outside Flower we set one.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = None


def reply(node_id: int, arrays: dict[str, np.ndarray], samples: int, loss: float, fp: str) -> Message:
    TaskIdentity.node_id = 0
    query = Message(content=RecordDict({}), dst_node_id=node_id, message_type="train")
    TaskIdentity.node_id = node_id
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: torch.from_numpy(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": samples, "train-loss": loss}),
            "node": ConfigRecord({"name": f"n{node_id}", "fingerprint": fp}),
        }
    )
    return Message(content=content, reply_to=query)


def test_fedavg_weights_adapters_by_samples_as_computed_by_hand():
    a = {"lora_A": np.array([[1.0, 2.0]], dtype=np.float32), "lora_B": np.array([0.0, 4.0], dtype=np.float32)}
    b = {"lora_A": np.array([[3.0, -2.0]], dtype=np.float32), "lora_B": np.array([8.0, 0.0], dtype=np.float32)}
    strategy = RecordingFedAvg(min_train_nodes=2, min_available_nodes=2)
    arrays, metrics = strategy.aggregate_train(1, [reply(11, a, 1, 2.0, "f1"), reply(22, b, 3, 1.0, "f2")])
    merged = arrays.to_numpy_ndarrays()
    # (1*a + 3*b) / 4
    np.testing.assert_allclose(merged[0], [[2.5, -1.0]])
    np.testing.assert_allclose(merged[1], [6.0, 1.0])
    assert metrics["train-loss"] == pytest.approx((1 * 2.0 + 3 * 1.0) / 4)

    log = strategy.rounds[1]
    assert [(r.node_id, r.name, r.fingerprint) for r in log.replies] == [(11, "n11", "f1"), (22, "n22", "f2")]
    assert log.replies[0].metrics["num-examples"] == 1
    assert log.train_metrics["train-loss"] == pytest.approx(1.25)


def test_non_finite_metrics_are_logged_as_null():
    a = {"w": np.array([1.0], dtype=np.float32)}
    strategy = RecordingFedAvg(min_train_nodes=1, min_available_nodes=1)
    strategy.aggregate_train(1, [reply(5, a, 2, float("nan"), "f")])
    assert strategy.rounds[1].replies[0].metrics["train-loss"] is None
