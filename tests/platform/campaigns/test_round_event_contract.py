"""The round event as the ServerApp builds it (GuardedStrategy's log, JSON over HTTP) is what the site stores.

No Flower processes: the strategy runs in-process on hand-made replies, and the event goes through the report
API as the Reporter sends it (json.dumps, so a NaN loss travels as JSON's NaN).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from campaigns.models import BaseModel, Campaign, Round
from community.models import Node
from federation.config import AggregationConfig
from federation.events import ADAPTER_FILES
from federation.strategy import build_strategy

pytestmark = pytest.mark.django_db
TOKEN = "contract-token"
ZERO = {"w": np.zeros(4, dtype=np.float32)}


@pytest.fixture(autouse=True)
def _identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = None


class Grid:
    def get_node_ids(self) -> list[int]:
        return [11, 12, 13, 14]


def reply(node_id: int, update: float, **metrics: float) -> Message:
    TaskIdentity.node_id = 0
    query = Message(content=RecordDict({}), dst_node_id=node_id, message_type="train")
    TaskIdentity.node_id = node_id
    reported = {"num-examples": 10, "train-loss": 1.5, "tokens": 640, "bytes-up": 16, "bytes-down": 16, **metrics}
    return Message(
        content=RecordDict({
            "arrays": ArrayRecord({"w": torch.full((4,), update)}),
            "metrics": MetricRecord(reported),
            "node": ConfigRecord({"name": "I am node 12" if node_id == 11 else f"n{node_id}", "fingerprint": "ab"}),
        }),
        reply_to=query,
    )  # fmt: skip


def test_the_servers_round_event_is_stored_as_the_strategy_logged_it(client, tmp_path, settings):
    settings.DATA_DIR = tmp_path
    settings.LINK_SECRET_FILE, settings.LINK_SECRET_SHA256 = tmp_path / "link-secret", ""
    settings.LINK_SECRET_FILE.write_text(TOKEN + "\n")
    base = BaseModel.objects.create(name="b", hf_id="org/b", path=str(tmp_path))
    campaign = Campaign.objects.create(
        name="c", base_model=base, data_task="t", heldout_path="h", num_rounds=1, status=Campaign.Status.RUNNING,
        flwr_run_id="7",
    )  # fmt: skip
    enrolled = {i: Node.objects.create(name=f"enrolled-{i}", flwr_node_id=str(i)) for i in (11, 12, 13)}

    strategy = build_strategy(AggregationConfig(), min_nodes=4)
    list(strategy.configure_train(1, ArrayRecord({"w": torch.from_numpy(ZERO["w"])}), ConfigRecord({}), Grid()))
    replies = [
        reply(11, 0.1, **{"num-examples": 10**7, "val-loss-after": float("nan")}),  # a liar, capped
        reply(12, 0.1, tokens=-1),  # refused by the strategy: out of bounds
        reply(13, 0.1, **{"val-loss-after": 0.9}),  # node-validation "after": no loss before, not a fake 0
        reply(14, 0.1),  # a node the platform never enrolled
    ]
    strategy.aggregate_train(1, replies)
    log = strategy.rounds[1]
    event = {  # the fields server_app.record_round sends
        "type": "round", "round": 1, "adapter_files": dict.fromkeys(ADAPTER_FILES, "c" * 64), "eval_loss": 1.2,
        "eval_perplexity": 3.3, "eval_tokens": 100, "seconds": 4.0, "train": log.train_metrics,
        "nodes": [asdict(r) for r in log.replies], "epsilon": log.epsilon, "delta": log.delta, "timings": {},
    }  # fmt: skip
    response = client.post(
        f"/api/v1/campaigns/{campaign.pk}/events", json.dumps(event), content_type="application/json",
        headers={"Authorization": f"Bearer {TOKEN}", "X-Flower-Run-Id": "7"},
    )  # fmt: skip
    assert response.status_code == 200, response.content

    round_ = Round.objects.get(campaign=campaign, number=1)
    rows = {p.node.flwr_node_id: p for p in round_.participations.select_related("node")}
    assert set(rows) == {"11", "12", "13"}
    assert rows["11"].node == enrolled[11] and rows["11"].node.name == "enrolled-11"  # not "I am node 12"
    assert rows["11"].samples == 10**7 and rows["11"].val_loss_after is None  # the claim, on record as claimed
    assert rows["13"].val_loss_before is None and rows["13"].val_loss_after == pytest.approx(0.9)
    assert "tokens=-1" in rows["12"].rejected_reason and rows["12"].tokens == 0
    assert (round_.participants, round_.rejected, round_.failures) == (2, 1, 0)
    assert round_.train_loss == pytest.approx(1.5)
    assert round_.errors == ["node id 14 is not an enrolled node; its row is not recorded (its update merged)"]
    # What the merge used: the liar counted as 3x the median claim, not 10**7.
    assert {r.node_id: r.weight for r in log.replies if not r.rejected} == {11: 30, 13: 10, 14: 10}
