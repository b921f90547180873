"""The round event as the ServerApp builds it (GuardedStrategy's log, JSON over HTTP) is what the site stores,
from the metrics a node sends (built as the ClientApp builds them) to the columns of its row.

No Flower processes: the strategy runs in-process on hand-made replies, and the event goes through the report
API as the Reporter sends it (json.dumps, so a NaN loss travels as JSON's NaN).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from campaigns.models import BaseCheckpoint, Campaign, Round
from community.models import Node
from federation.artifacts import ADAPTER_FILES
from federation.config import AggregationConfig
from federation.events import EVENT_EVALUATED, EVENT_ROUND, EvaluationReport, NodeMetrics, RoundReport
from federation.packing import LAYOUT_KEY, pack_records
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


HONEST = NodeMetrics(
    examples=10, train_loss=1.5, val_loss_before=1.75, val_loss_after=1.25, steps=3, tokens=640, loss_tokens=600,
    train_seconds=2.5, startup_seconds=0.5, load_seconds=1.0, eval_seconds=0.25, node_seconds=4.5, bytes_down=16,
    bytes_up=24,
)  # fmt: skip


def reply(node_id: int, update: float, **changes: float) -> Message:
    """A node's reply, its metrics built the way the ClientApp builds them (NodeMetrics.record)."""
    TaskIdentity.node_id = 0
    query = Message(content=RecordDict({}), dst_node_id=node_id, message_type="train")
    TaskIdentity.node_id = node_id
    reported = dataclasses.replace(HONEST, **changes).record()
    arrays, layout = pack_records({"w": np.full(4, update, np.float32)}, "float32")  # as the ClientApp sends it
    return Message(
        content=RecordDict({
            "arrays": arrays,
            LAYOUT_KEY: layout,
            "metrics": MetricRecord(reported),
            "node": ConfigRecord({"name": "I am node 12" if node_id == 11 else f"n{node_id}", "fingerprint": "ab"}),
        }),
        reply_to=query,
    )  # fmt: skip


@pytest.fixture
def campaign(tmp_path, settings) -> Campaign:
    """A campaign running Flower run 7, whose ServerApp holds the link secret TOKEN."""
    settings.DATA_DIR = tmp_path
    settings.LINK_SECRET_FILE, settings.LINK_SECRET_SHA256 = tmp_path / "link-secret", ""
    settings.LINK_SECRET_FILE.write_text(TOKEN + "\n")
    base = BaseCheckpoint.objects.create(name="b", hf_id="org/b", path=str(tmp_path))
    return Campaign.objects.create(
        name="c", base_model=base, data_task="t", heldout_path="h", num_rounds=1, status=Campaign.Status.RUNNING,
        flwr_run_id="7",
    )  # fmt: skip


def post_event(client, campaign: Campaign, body: dict):
    return client.post(
        f"/api/v1/campaigns/{campaign.pk}/events", json.dumps(body), content_type="application/json",
        headers={"Authorization": f"Bearer {TOKEN}", "X-Flower-Run-Id": "7"},
    )  # fmt: skip


def test_the_servers_round_event_is_stored_as_the_strategy_logged_it(client, campaign):
    enrolled = {i: Node.objects.create(name=f"enrolled-{i}", flwr_node_id=str(i)) for i in (11, 12, 13)}

    strategy = build_strategy(AggregationConfig(), min_nodes=4)
    list(strategy.configure_train(1, ArrayRecord({"w": torch.from_numpy(ZERO["w"])}), ConfigRecord({}), Grid()))
    replies = [
        reply(11, 0.1, examples=10**7, val_loss_after=float("nan")),  # a liar, capped
        reply(12, 0.1, tokens=-1),  # refused by the strategy: out of bounds
        reply(13, 0.1),
        reply(14, 0.1),  # a node the platform never enrolled
    ]
    strategy.aggregate_train(1, replies)
    log = strategy.rounds[1]
    report = RoundReport(  # as server_app.record_round fills it from the strategy's log
        round=1, adapter_files=dict.fromkeys(ADAPTER_FILES, "c" * 64), seconds=4.0, timings={},
        train=log.train_metrics, nodes=[asdict(r) for r in log.replies], epsilon=log.epsilon, delta=log.delta,
    )  # fmt: skip
    # The Reporter sends {"type": ..., **payload} (federation.report.Reporter.event).
    response = post_event(client, campaign, {"type": EVENT_ROUND, **report.payload()})
    assert response.status_code == 200, response.content

    round_ = Round.objects.get(campaign=campaign, number=1)
    assert not round_.evaluated and round_.eval_loss is None  # on record once merged; the evaluation follows
    scored = EvaluationReport(round=1, eval_loss=1.2, eval_perplexity=3.3, eval_tokens=100, timings={})
    assert post_event(client, campaign, {"type": EVENT_EVALUATED, **scored.payload()}).status_code == 200
    round_.refresh_from_db()
    assert round_.evaluated and (round_.eval_loss, round_.eval_perplexity) == (1.2, 3.3)
    rows = {p.node.flwr_node_id: p for p in round_.participations.select_related("node")}
    assert set(rows) == {"11", "12", "13"}
    assert rows["11"].node == enrolled[11] and rows["11"].node.name == "enrolled-11"  # not "I am node 12"
    assert rows["11"].samples == 10**7 and rows["11"].val_loss_after is None  # the claim, on record as claimed
    assert "tokens=-1" in rows["12"].rejected_reason and rows["12"].tokens == 0
    # An honest node's every metric reaches its column under the name the ClientApp sent it by.
    stored = rows["13"]
    assert (stored.samples, stored.tokens, stored.bytes_up, stored.bytes_down) == (10, 640, 24, 16)
    assert (stored.train_loss, stored.val_loss_before, stored.val_loss_after, stored.seconds) == (1.5, 1.75, 1.25, 2.5)
    assert (round_.bytes_up, round_.bytes_down) == (24 * 2, 16 * 2)  # 11 and 13: 12 was refused, 14 is not enrolled
    assert (round_.participants, round_.rejected, round_.failures) == (2, 1, 0)
    assert round_.train_loss == pytest.approx(1.5)
    assert round_.errors == ["node id 14 is not an enrolled node; its row is not recorded (its update merged)"]
    # What the merge used: the liar counted as 3x the median claim, not 10**7.
    assert {r.node_id: r.weight for r in log.replies if not r.rejected} == {11: 30, 13: 10, 14: 10}


def test_the_held_out_scores_of_a_round_are_stored_per_group_and_bad_ones_refused(client, campaign):
    from federation.events import CHRF, EXACT_MATCH, HeldoutScores

    scores = HeldoutScores(
        metrics={CHRF: 37.5, EXACT_MATCH: 6.25},
        records=16,
        groups={"id": {"loss": 1.5, "tokens": 90, "records": 8, CHRF: 45.0, EXACT_MATCH: 12.5},
                "sw": {"loss": 2.5, "tokens": 80, "records": 8, CHRF: 30.0, EXACT_MATCH: 0.0}},
    )  # fmt: skip
    event = {
        "type": EVENT_ROUND, "round": 0, "adapter_files": dict.fromkeys(ADAPTER_FILES, "c" * 64), "eval_loss": 2.0,
        "eval_perplexity": 7.4, "eval_tokens": 170, "nodes": [], **scores.fields(),
    }  # fmt: skip

    def post(body: dict):
        return post_event(client, campaign, body)

    bad = post({**event, "groups": {"id": {"chrf": 1e9}}})
    assert bad.status_code == 400 and "groups.id.chrf=1e+09 is outside [0, 100]" in bad.json()["error"]
    assert post(event).status_code == 200
    round_ = Round.objects.get(campaign=campaign, number=0)
    assert (round_.task_metrics, round_.task_records, round_.group_metrics) == (
        scores.metrics, scores.records, scores.groups
    )  # fmt: skip


def test_a_rounds_evaluation_follows_it_once_and_the_first_one_stands(client, campaign):
    """The ServerApp records a round when merged and evaluates it after; a resumed run evaluates the round it starts
    from again (its first run may have stopped in between): only the first evaluation is kept."""
    from federation.events import CHRF, HeldoutScores

    files = dict.fromkeys(ADAPTER_FILES, "c" * 64)
    scored = EvaluationReport(
        round=1, eval_loss=1.5, eval_perplexity=4.5, eval_tokens=90, timings={"evaluated": 1.0},
        scores=HeldoutScores(metrics={CHRF: 20.0}, records=4),
    )  # fmt: skip
    early = post_event(client, campaign, {"type": EVENT_EVALUATED, **scored.payload()})
    assert early.status_code == 409 and "round 1 is not on record" in early.json()["error"]

    merged = RoundReport(round=1, adapter_files=files, seconds=3.0, timings={})
    assert post_event(client, campaign, {"type": EVENT_ROUND, **merged.payload()}).status_code == 200
    recorded_at = Round.objects.get(campaign=campaign, number=1).recorded_at
    bad = post_event(client, campaign, {"type": EVENT_EVALUATED, **scored.payload(), "eval_loss": -1.0})
    assert bad.status_code == 400 and "eval_loss=-1 is outside" in bad.json()["error"]
    missing = {k: v for k, v in scored.payload().items() if k != "eval_loss"}
    assert post_event(client, campaign, {"type": EVENT_EVALUATED, **missing}).status_code == 400
    assert not Round.objects.get(campaign=campaign, number=1).evaluated  # nothing of a refused event is kept

    assert post_event(client, campaign, {"type": EVENT_EVALUATED, **scored.payload()}).status_code == 200
    again = dataclasses.replace(scored, eval_loss=9.0, eval_perplexity=8103.0)
    assert post_event(client, campaign, {"type": EVENT_EVALUATED, **again.payload()}).status_code == 200
    round_ = Round.objects.get(campaign=campaign, number=1)
    assert (round_.eval_loss, round_.task_metrics, round_.task_records) == (1.5, {CHRF: 20.0}, 4)
    assert round_.evaluated_at is not None and round_.recorded_at == recorded_at

    # The same round event sent again (a retry) keeps the evaluation; a different one for an unsealed round
    # (a resumed run redoing it) replaces the round, evaluation and all.
    assert post_event(client, campaign, {"type": EVENT_ROUND, **merged.payload()}).status_code == 200
    assert Round.objects.get(campaign=campaign, number=1).evaluated
    redone = dataclasses.replace(merged, seconds=5.0)
    assert post_event(client, campaign, {"type": EVENT_ROUND, **redone.payload()}).status_code == 200
    round_ = Round.objects.get(campaign=campaign, number=1)
    assert not round_.evaluated and round_.task_metrics == {}
