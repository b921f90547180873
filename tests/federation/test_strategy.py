"""The guarded strategies: Flower's aggregation checked by hand, hostile updates refused and recorded, DP accounted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    MultiKrum,
)
from flwr.supercore.task_identity import TaskIdentity

from federation import events
from federation.config import NODES_IN_ROUND, AggregationConfig, TrainConfig
from federation.packing import LAYOUT_KEY, PACKED_KEY, pack_records, unpack_content
from federation.strategy import GuardedStrategy, build_strategy, describe
from testbed.attack import apply_attack

STRATEGIES = ["fedavg", "fedmedian", "fedtrimmedavg", "multikrum"]


@pytest.fixture(autouse=True)
def _identity():
    # Messages are stamped with the running task's identity; outside Flower we set one.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = None


class NodesOnlyGrid:
    """The one thing configure_train asks of a Grid here: which nodes are connected."""

    def __init__(self, n: int) -> None:
        self.ids = list(range(1, n + 1))

    def get_node_ids(self) -> list[int]:
        return self.ids


def reply(
    node_id: int, arrays: dict[str, np.ndarray], samples: float, loss: float = 1.0, fp: str = "f",
    name: str | None = None, dtype: str = "float32", **metrics: float,
) -> Message:  # fmt: skip
    """A node's reply as the ClientApp sends it: the adapter packed (federation.packing) in `dtype`."""
    TaskIdentity.node_id = 0
    query = Message(content=RecordDict({}), dst_node_id=node_id, message_type="train")
    TaskIdentity.node_id = node_id
    reported = {"num-examples": samples, "train-loss": loss, "tokens": 10 * samples, **metrics}
    packed, layout = pack_records(arrays, dtype)
    content = RecordDict(
        {
            "arrays": packed,
            LAYOUT_KEY: layout,
            "metrics": MetricRecord(reported),
            "node": ConfigRecord({"name": f"n{node_id}" if name is None else name, "fingerprint": fp}),
        }
    )
    return Message(content=content, reply_to=query)


def start_round(strategy: GuardedStrategy, global_arrays: dict[str, np.ndarray], nodes: int) -> None:
    record = ArrayRecord({k: torch.from_numpy(v) for k, v in global_arrays.items()})
    list(strategy.configure_train(1, record, ConfigRecord({}), NodesOnlyGrid(nodes)))


ZERO = {"lora_A": np.zeros((1, 2), dtype=np.float32), "lora_B": np.zeros(2, dtype=np.float32)}


def honest(seed: int) -> dict[str, np.ndarray]:
    """A small update near (0.1, 0.1 | 0.1, 0.1), different per node."""
    rng = np.random.default_rng(seed)
    return {k: (0.1 + 0.01 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in ZERO.items()}


def hostile(mode: str, seed: int = 9) -> dict[str, np.ndarray]:
    trained = {k: torch.from_numpy(v) for k, v in honest(seed).items()}
    received = {k: torch.from_numpy(v) for k, v in ZERO.items()}
    return {k: v.numpy() for k, v in apply_attack(mode, trained, received).items()}


def four_replies(attack: str | None) -> list[Message]:
    replies = [reply(i, honest(i), samples=10) for i in (1, 2, 3)]
    replies.append(reply(4, hostile(attack) if attack else honest(4), samples=10))
    return replies


def test_fedavg_weights_adapters_by_samples_as_computed_by_hand():
    a = {"lora_A": np.array([[1.0, 2.0]], dtype=np.float32), "lora_B": np.array([0.0, 4.0], dtype=np.float32)}
    b = {"lora_A": np.array([[3.0, -2.0]], dtype=np.float32), "lora_B": np.array([8.0, 0.0], dtype=np.float32)}
    strategy = build_strategy(AggregationConfig(), min_nodes=2)
    start_round(strategy, ZERO, 2)
    arrays, metrics = strategy.aggregate_train(1, [reply(1, a, 1, 2.0, "f1"), reply(2, b, 3, 1.0, "f2")])
    merged = arrays.to_numpy_ndarrays()
    # (1*a + 3*b) / 4
    np.testing.assert_allclose(merged[0], [[2.5, -1.0]])
    np.testing.assert_allclose(merged[1], [6.0, 1.0])
    assert metrics["train-loss"] == pytest.approx((1 * 2.0 + 3 * 1.0) / 4)

    log = strategy.rounds[1]
    assert [(r.node_id, r.name, r.fingerprint) for r in log.replies] == [(1, "n1", "f1"), (2, "n2", "f2")]
    assert log.replies[0].metrics["num-examples"] == 1
    assert log.train_metrics["train-loss"] == pytest.approx(1.25)
    assert log.replies[0].update_norm == pytest.approx(np.sqrt(1 + 4 + 0 + 16))
    assert log.epsilon is None


def test_a_node_that_never_replied_is_a_failure_of_the_round_and_the_others_are_merged():
    strategy = build_strategy(AggregationConfig(), min_nodes=3)
    start_round(strategy, ZERO, 3)
    # Flower hands over what came back before the round timeout: node 2's reply never did.
    arrays, _ = strategy.aggregate_train(1, [reply(1, honest(1), 10), reply(3, honest(3), 10)])
    log = strategy.rounds[1]
    assert [(r.node_id, r.error) for r in log.replies] == [(1, ""), (3, ""), (2, "no reply before the round timeout")]
    expected = (honest(1)["lora_B"] + honest(3)["lora_B"]) / 2
    np.testing.assert_allclose(arrays["lora_B"].numpy(), expected, rtol=1e-6)


def error_reply(node_id: int, reason: str) -> Message:
    TaskIdentity.node_id = 0
    query = Message(content=RecordDict({}), dst_node_id=node_id, message_type="train")
    TaskIdentity.node_id = node_id
    return Message(error=Error(code=0, reason=reason), reply_to=query)


def test_a_node_counts_once_however_many_errors_flower_hands_over_for_it():
    strategy = build_strategy(AggregationConfig(), min_nodes=3)
    start_round(strategy, ZERO, 3)
    replies = [error_reply(1, "app timed out"), error_reply(1, "app crashed"), reply(2, honest(2), 10)]
    replies += [error_reply(2, "late duplicate"), reply(3, honest(3), 10)]
    strategy.aggregate_train(1, replies)
    assert [(r.node_id, r.error) for r in strategy.rounds[1].replies] == [(1, "app timed out"), (2, ""), (3, "")]


def test_an_error_the_superlink_sends_for_an_unreachable_node_is_that_nodes_failure():
    strategy = build_strategy(AggregationConfig(), min_nodes=2)
    grid = NodesOnlyGrid(0)
    grid.ids = [5, 6]
    record = ArrayRecord({k: torch.from_numpy(v) for k, v in ZERO.items()})
    sent = list(strategy.configure_train(1, record, ConfigRecord({}), grid))
    for msg in sent:  # what Flower's grid does as it pushes them
        msg.metadata.__dict__["_message_id"] = msg.object_id
    to_6 = next(m for m in sent if m.metadata.dst_node_id == 6)
    unavailable = Message(error=Error(code=0, reason="Node Unavailable"), reply_to=to_6)
    unavailable.metadata.__dict__["_src_node_id"] = 1  # the SuperLink answers for a node that went silent
    strategy.aggregate_train(1, [reply(5, honest(5), 10), unavailable])
    assert [(r.node_id, r.error) for r in strategy.rounds[1].replies] == [(5, ""), (6, "Node Unavailable")]


@pytest.mark.parametrize("aggregation", [AggregationConfig(), AggregationConfig(dp_noise_multiplier=1.0)])
def test_nodes_per_round_draws_that_many_of_the_connected_nodes(aggregation):
    record = ArrayRecord({k: torch.from_numpy(v) for k, v in ZERO.items()})
    drawn = build_strategy(aggregation, min_nodes=2, nodes_per_round=3)
    messages = list(drawn.configure_train(1, record, ConfigRecord({}), NodesOnlyGrid(10)))
    assert len({m.metadata.dst_node_id for m in messages}) == len(messages) == 3


def test_instructions_tell_each_node_how_many_nodes_the_round_averages_and_its_layout_stays_intact():
    record = ArrayRecord({k: torch.from_numpy(v) for k, v in ZERO.items()})
    drawn = build_strategy(AggregationConfig(), min_nodes=2, nodes_per_round=3)
    messages = list(drawn.configure_train(1, record, ConfigRecord({}), NodesOnlyGrid(10)))
    assert [m.content["config"][NODES_IN_ROUND] for m in messages] == [3, 3, 3]
    assert TrainConfig(lr=1e-3).round_lr(messages[0].content["config"]) == pytest.approx(3e-3)
    got = unpack_content(messages[0].content, {k: v.shape for k, v in ZERO.items()}, "float32")
    assert all(np.array_equal(got[k], v) for k, v in ZERO.items())


def test_without_nodes_per_round_every_connected_node_trains():
    record = ArrayRecord({k: torch.from_numpy(v) for k, v in ZERO.items()})
    every = build_strategy(AggregationConfig(), min_nodes=2)
    messages = list(every.configure_train(1, record, ConfigRecord({}), NodesOnlyGrid(10)))
    assert sorted(m.metadata.dst_node_id for m in messages) == list(range(1, 11))


def test_non_finite_metrics_are_logged_as_null():
    strategy = build_strategy(AggregationConfig(), min_nodes=1)
    start_round(strategy, {"w": np.zeros(1, dtype=np.float32)}, 1)
    strategy.aggregate_train(1, [reply(5, {"w": np.array([1.0], dtype=np.float32)}, 2, float("nan"))])
    assert strategy.rounds[1].replies[0].metrics["train-loss"] is None


@pytest.mark.parametrize("name", [*STRATEGIES, "dp"])
@pytest.mark.parametrize(
    ("attack", "reason"), [("nan", "non-finite values"), ("wrong-shape", "wrong shape for lora_A: (1, 1)")]
)
def test_malformed_updates_are_always_rejected_recorded_and_never_aggregated(name, attack, reason):
    cfg = AggregationConfig(dp_noise_multiplier=0.5) if name == "dp" else AggregationConfig(strategy=name)
    strategy = build_strategy(cfg, min_nodes=4)
    start_round(strategy, ZERO, 4)
    arrays, _ = strategy.aggregate_train(1, four_replies(attack))

    log = strategy.rounds[1]
    assert [r.node_id for r in log.replies if r.rejected] == [4]
    assert reason in log.replies[3].rejected
    assert log.replies[3].data_value is None
    assert all(not r.rejected and r.data_value is not None for r in log.replies[:3])
    merged = arrays.to_numpy_ndarrays()
    assert all(np.isfinite(m).all() for m in merged) and merged[0].shape == (1, 2)


def test_missing_tensor_is_rejected_by_name():
    strategy = build_strategy(AggregationConfig(), min_nodes=2)
    start_round(strategy, ZERO, 2)
    strategy.aggregate_train(1, [reply(1, honest(1), 5), reply(2, {"lora_A": honest(2)["lora_A"]}, 5)])
    assert strategy.rounds[1].replies[1].rejected == "packed adapter refused: missing tensors: lora_B"


def test_an_absolute_norm_bound_rejects_a_scaled_update():
    strategy = build_strategy(AggregationConfig(max_update_norm=1.0), min_nodes=4)
    start_round(strategy, ZERO, 4)
    arrays, _ = strategy.aggregate_train(1, four_replies("scale"))
    scaled = strategy.rounds[1].replies[3]
    assert scaled.rejected.startswith("update norm") and "exceeds the bound 1" in scaled.rejected
    assert scaled.update_norm > 5.0
    # FedAvg of the three honest updates only: close to 0.1 everywhere.
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], 0.1, atol=0.03)


def test_a_norm_ratio_rule_rejects_a_scaled_update_without_knowing_the_model():
    strategy = build_strategy(AggregationConfig(max_norm_ratio=5.0), min_nodes=4)
    start_round(strategy, ZERO, 4)
    strategy.aggregate_train(1, four_replies("scale"))
    assert [r.node_id for r in strategy.rounds[1].replies if r.rejected] == [4]
    assert "x the round's median" in strategy.rounds[1].replies[3].rejected


def test_plain_fedavg_without_a_bound_is_dragged_by_a_scaled_update():
    strategy = build_strategy(AggregationConfig(max_norm_ratio=0.0), min_nodes=4)
    start_round(strategy, ZERO, 4)
    arrays, _ = strategy.aggregate_train(1, four_replies("scale"))
    assert not any(r.rejected for r in strategy.rounds[1].replies)
    assert np.abs(arrays.to_numpy_ndarrays()[0]).max() > 1.0  # ≈ (3 * 0.1 + 50 * 0.1) / 4


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg", "multikrum"])
def test_robust_strategies_stay_near_the_honest_updates_under_a_scaled_update(name):
    strategy = build_strategy(AggregationConfig(strategy=name), min_nodes=4)
    start_round(strategy, ZERO, 4)
    arrays, _ = strategy.aggregate_train(1, four_replies("scale"))
    for merged in arrays.to_numpy_ndarrays():
        np.testing.assert_allclose(merged, 0.1, atol=0.05)


def test_data_value_is_high_for_aligned_updates_and_negative_for_a_sign_flip():
    strategy = build_strategy(AggregationConfig(strategy="fedmedian"), min_nodes=4)
    start_round(strategy, ZERO, 4)
    strategy.aggregate_train(1, four_replies("sign-flip"))
    values = [r.data_value for r in strategy.rounds[1].replies]
    assert all(v > 0.9 for v in values[:3])
    assert values[3] < -0.9


def test_central_dp_records_epsilon_and_keeps_the_sample_size_when_rejecting():
    cfg = AggregationConfig(dp_noise_multiplier=1.0, dp_clipping_norm=0.5, dp_delta=1e-5)
    strategy = build_strategy(cfg, min_nodes=4)
    start_round(strategy, ZERO, 4)
    arrays, _ = strategy.aggregate_train(1, four_replies("nan"))
    log = strategy.rounds[1]
    assert arrays is not None  # the NaN reply was replaced by a zero update, so the round was released
    assert log.epsilon is not None and log.epsilon > 0 and log.delta == 1e-5
    assert [r.node_id for r in log.replies if r.rejected] == [4]

    first = log.epsilon
    list(strategy.configure_train(2, arrays, ConfigRecord({}), NodesOnlyGrid(4)))
    strategy.aggregate_train(2, four_replies(None))
    assert strategy.rounds[2].epsilon > first  # composition: privacy spent only grows


@pytest.mark.parametrize(
    ("cfg", "inner"),
    [
        (AggregationConfig(), FedAvg),
        (AggregationConfig(strategy="fedmedian"), FedMedian),
        (AggregationConfig(strategy="fedtrimmedavg"), FedTrimmedAvg),
        (AggregationConfig(strategy="multikrum"), MultiKrum),
        (AggregationConfig(dp_noise_multiplier=1.0), DifferentialPrivacyServerSideFixedClipping),
    ],
)
def test_each_campaign_strategy_is_flowers_own_class(cfg, inner):
    assert type(build_strategy(cfg, min_nodes=4).inner) is inner


def test_multikrum_averages_all_but_the_tolerated_hostile_nodes_by_default():
    krum = build_strategy(AggregationConfig(strategy="multikrum", krum_malicious=1), min_nodes=4).inner
    assert (krum.num_malicious_nodes, krum.num_nodes_to_select) == (1, 3)


# --- what a node claims about itself is bounded: sample counts, metrics, names, fingerprints ------------------


def test_the_default_config_refuses_a_scaled_update():
    strategy = build_strategy(AggregationConfig(), min_nodes=4)
    start_round(strategy, ZERO, 4)
    arrays, _ = strategy.aggregate_train(1, four_replies("scale"))
    assert [r.node_id for r in strategy.rounds[1].replies if r.rejected] == [4]
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], 0.1, atol=0.03)


def against(seed: int = 7) -> dict[str, np.ndarray]:
    """An update pulling the other way, small enough to pass every norm rule."""
    return {k: -v for k, v in honest(seed).items()}


def test_a_node_claiming_a_huge_sample_count_weighs_at_most_a_few_honest_nodes():
    strategy = build_strategy(AggregationConfig(), min_nodes=4)
    start_round(strategy, ZERO, 4)
    replies = [reply(i, honest(i), samples=10) for i in (1, 2, 3)] + [reply(4, against(), samples=10**8)]
    arrays, _ = strategy.aggregate_train(1, replies)
    log = strategy.rounds[1]
    assert not any(r.rejected for r in log.replies)
    assert [r.weight for r in log.replies] == [10, 10, 10, 30]  # 3x the round's median claim
    expected = (10 * sum(honest(i)["lora_B"] for i in (1, 2, 3)) + 30 * against()["lora_B"]) / 60
    np.testing.assert_allclose(arrays["lora_B"].numpy(), expected, rtol=1e-5)
    assert arrays["lora_B"].numpy().mean() > -0.02  # not the liar's update (~-0.1), which it was with raw weights


def test_with_two_nodes_neither_outweighs_the_other_more_than_the_ratio():
    strategy = build_strategy(AggregationConfig(), min_nodes=2)
    start_round(strategy, ZERO, 2)
    strategy.aggregate_train(1, [reply(1, honest(1), samples=10), reply(2, against(), samples=10**6)])
    assert [r.weight for r in strategy.rounds[1].replies] == [10, 30]


def test_the_absolute_weight_cap_comes_from_the_campaign():
    strategy = build_strategy(AggregationConfig(max_examples=20, max_weight_ratio=0.0), min_nodes=3)
    start_round(strategy, ZERO, 3)
    strategy.aggregate_train(1, [reply(i, honest(i), samples=n) for i, n in ((1, 5), (2, 20), (3, 5000))])
    assert [r.weight for r in strategy.rounds[1].replies] == [5, 20, 20]


@pytest.mark.parametrize("name", [*STRATEGIES, "dp"])
def test_the_weight_cap_holds_under_every_strategy(name):
    cfg = AggregationConfig(dp_noise_multiplier=0.01) if name == "dp" else AggregationConfig(strategy=name)
    strategy = build_strategy(cfg, min_nodes=4)
    start_round(strategy, ZERO, 4)
    replies = [reply(i, honest(i), samples=10) for i in (1, 2, 3)] + [reply(4, against(), samples=10**8)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert [r.weight for r in strategy.rounds[1].replies] == [10, 10, 10, 30]
    # Honest updates are ~0.1, the liar's ~-0.1: with its raw weight FedAvg's merge was the liar's (~-0.1); now
    # it weighs at most as much as the three honest nodes together, whatever the strategy.
    assert arrays["lora_B"].numpy().mean() > -0.02


def test_a_sample_count_beyond_any_dataset_is_refused_not_merged():
    strategy = build_strategy(AggregationConfig(), min_nodes=2)
    start_round(strategy, ZERO, 2)
    strategy.aggregate_train(1, [reply(1, honest(1), samples=10), reply(2, against(), samples=1e12)])
    refused = strategy.rounds[1].replies[1]
    assert "num-examples=1e+12 is outside [1, 1e+09]" in refused.rejected and refused.weight is None


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [({"tokens": -1}, "tokens=-1 is outside"), ({"bytes-up": 1e19}, "bytes-up=1e+19"),
     ({"train-seconds": float("inf")}, "train-seconds must be finite"), ({"steps": 2.5}, "steps must be a whole")],
)  # fmt: skip
def test_a_reply_whose_metrics_break_their_bounds_is_refused_with_the_reason(metrics, reason):
    strategy = build_strategy(AggregationConfig(), min_nodes=2)
    start_round(strategy, ZERO, 2)
    strategy.aggregate_train(1, [reply(1, honest(1), 10), reply(2, honest(2), 10, **metrics)])
    refused = strategy.rounds[1].replies[1]
    assert refused.rejected.startswith("reported metrics out of bounds") and reason in refused.rejected
    assert set(refused.metrics) <= set(events.NODE_METRICS)  # the bad value itself is not passed on


def test_a_huge_train_loss_cannot_make_the_merged_train_loss_infinite():
    strategy = build_strategy(AggregationConfig(max_weight_ratio=0.0), min_nodes=2)
    start_round(strategy, ZERO, 2)
    _, metrics = strategy.aggregate_train(1, [reply(1, honest(1), 10**9, loss=1e308), reply(2, honest(2), 10)])
    assert "train-loss" in strategy.rounds[1].replies[0].rejected
    assert strategy.rounds[1].train_metrics["train-loss"] == pytest.approx(1.0)


def test_node_names_are_cut_and_a_fingerprint_must_be_a_digest():
    strategy = build_strategy(AggregationConfig(), min_nodes=2)
    start_round(strategy, ZERO, 2)
    strategy.aggregate_train(
        1, [reply(1, honest(1), 10, name="x" * 10_000), reply(2, honest(2), 10, fp="<script>alert(1)</script>")]
    )
    first, second = strategy.rounds[1].replies
    assert len(first.name) == events.MAX_NAME and not first.rejected
    assert "fingerprint" in second.rejected and second.fingerprint == ""


def test_a_resumed_dp_campaign_continues_the_accountant_of_the_earlier_rounds():
    """A new Flower run from round 1's adapter: after its first round, epsilon is the one of two rounds."""
    from federation import privacy

    cfg = AggregationConfig(dp_noise_multiplier=1.0, dp_clipping_norm=0.5, dp_delta=1e-5)
    whole = build_strategy(cfg, min_nodes=4)
    start_round(whole, ZERO, 4)
    arrays, _ = whole.aggregate_train(1, four_replies(None))
    list(whole.configure_train(2, arrays, ConfigRecord({}), NodesOnlyGrid(4)))
    whole.aggregate_train(2, four_replies(None))

    resumed = build_strategy(cfg, min_nodes=4)
    privacy.replay(resumed.inner, rounds=1)
    start_round(resumed, ZERO, 4)
    resumed.aggregate_train(1, four_replies(None))
    assert resumed.rounds[1].epsilon == pytest.approx(whole.rounds[2].epsilon)
    assert resumed.rounds[1].epsilon > whole.rounds[1].epsilon


# --- one vote per contributor: nodes of one contributor are merged into one reply first ------------------------


def seven_replies() -> list[Message]:
    """Three honest contributors with a node each (1-3); a fourth enrolled four nodes (4-7) pulling the other way."""
    return [reply(i, honest(i), samples=10) for i in (1, 2, 3)] + [
        reply(i, against(i), samples=10) for i in range(4, 8)
    ]


OWNERS = {1: "ana", 2: "ben", 3: "cas", 4: "mal", 5: "mal", 6: "mal", 7: "mal"}


def test_a_contributor_with_many_nodes_has_one_vote_in_a_robust_strategy():
    alone = build_strategy(AggregationConfig(strategy="fedmedian"), min_nodes=7)
    start_round(alone, ZERO, 7)
    per_node, _ = alone.aggregate_train(1, seven_replies())
    assert per_node["lora_B"].numpy().mean() < -0.05  # four nodes of one person outvote three people

    grouped = build_strategy(AggregationConfig(strategy="fedmedian"), min_nodes=7)
    grouped.owners = OWNERS
    start_round(grouped, ZERO, 7)
    per_person, _ = grouped.aggregate_train(1, seven_replies())
    assert per_person["lora_B"].numpy().mean() > 0.05  # one vote each: the three honest people win
    assert len(grouped.rounds[1].replies) == 7  # every node is still on record with its own report


def test_grouping_by_contributor_leaves_fedavg_unchanged():
    results = []
    for owners in ({}, OWNERS):
        strategy = build_strategy(AggregationConfig(max_norm_ratio=0.0), min_nodes=7)
        strategy.owners = owners
        start_round(strategy, ZERO, 7)
        arrays, _ = strategy.aggregate_train(1, seven_replies())
        results.append(arrays["lora_B"].numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5)


# --- the packed wire form: one array each way, optionally half precision, merged in float32 --------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_instructions_carry_the_global_adapter_as_one_packed_array_in_the_transfer_dtype(dtype):
    strategy = build_strategy(AggregationConfig(), min_nodes=2, transfer_dtype=dtype)
    global_arrays = honest(1)
    record = ArrayRecord({k: torch.from_numpy(v) for k, v in global_arrays.items()})
    sent = list(strategy.configure_train(1, record, ConfigRecord({}), NodesOnlyGrid(2)))
    assert len(sent) == 2
    for msg in sent:
        assert list(msg.content.array_records) == ["arrays"]
        assert list(msg.content["arrays"]) == [PACKED_KEY]
        # What a node does on arrival: unpack against its own adapter's names and shapes.
        got = unpack_content(msg.content, {k: v.shape for k, v in ZERO.items()}, dtype)
        for key, value in global_arrays.items():
            assert got[key].dtype == np.float32
            np.testing.assert_allclose(got[key], value, rtol=0 if dtype == "float32" else 8e-3)


@pytest.mark.parametrize("name", [*STRATEGIES, "dp"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_every_strategy_merges_half_precision_replies_in_float32_close_to_the_float32_merge(name, dtype):
    cfg = AggregationConfig(dp_noise_multiplier=1e-6) if name == "dp" else AggregationConfig(strategy=name)
    merged = {}
    for wire in ("float32", dtype):
        strategy = build_strategy(cfg, min_nodes=4, transfer_dtype=wire)
        start_round(strategy, ZERO, 4)
        replies = [reply(i, honest(i), samples=10 + i, dtype=wire) for i in (1, 2, 3, 4)]
        arrays, _ = strategy.aggregate_train(1, replies)
        assert not any(r.rejected for r in strategy.rounds[1].replies)
        merged[wire] = {k: arrays[k].numpy() for k in ZERO}
    for key in ZERO:
        assert merged[dtype][key].dtype == np.float32
        np.testing.assert_allclose(merged[dtype][key], merged["float32"][key], rtol=8e-3, atol=1e-5)


def test_a_reply_with_a_tampered_layout_is_refused_as_that_nodes_and_the_others_are_merged():
    strategy = build_strategy(AggregationConfig(), min_nodes=3)
    start_round(strategy, ZERO, 3)
    bad = reply(3, honest(3), 10)
    layout = dict(bad.content[LAYOUT_KEY])
    layout["names"] = list(reversed(layout["names"]))  # lora_B's numbers read as lora_A's: shapes no longer fit
    bad.content[LAYOUT_KEY] = ConfigRecord(layout)
    arrays, _ = strategy.aggregate_train(1, [reply(1, honest(1), 10), reply(2, honest(2), 10), bad])
    refused = strategy.rounds[1].replies[2]
    assert refused.node_id == 3
    assert refused.rejected == "packed adapter refused: wrong shape for lora_B: (1, 2) instead of (2,)"
    expected = (honest(1)["lora_B"] + honest(2)["lora_B"]) / 2
    np.testing.assert_allclose(arrays["lora_B"].numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: reply(2, honest(2), 10, dtype="float32"), "wire dtype 'float32' instead of the campaign's 'float16'"),
        (lambda: per_tensor_reply(2, honest(2)), "expected one packed array 'packed', got 2 arrays"),
    ],
)
def test_a_reply_not_in_the_campaigns_wire_form_is_refused_under_dp_too(make, reason):
    strategy = build_strategy(AggregationConfig(dp_noise_multiplier=0.5), min_nodes=2, transfer_dtype="float16")
    start_round(strategy, ZERO, 2)
    arrays, _ = strategy.aggregate_train(1, [reply(1, honest(1), 10, dtype="float16"), make()])
    assert reason in strategy.rounds[1].replies[1].rejected
    assert arrays is not None and all(np.isfinite(a).all() for a in arrays.to_numpy_ndarrays())


def per_tensor_reply(node_id: int, arrays: dict[str, np.ndarray]) -> Message:
    """Today's (pre-packing) form: one Array per tensor."""
    msg = reply(node_id, arrays, 10)
    del msg.content[LAYOUT_KEY]
    msg.content["arrays"] = ArrayRecord({k: torch.from_numpy(v) for k, v in arrays.items()})
    return msg


# --- FFA-LoRA: A frozen at its initialisation, only B trained, sent and merged ------------------------------------

A_KEY, B_KEY = "layer.lora_A.weight", "layer.lora_B.weight"  # one LoRA layer as PEFT names it: A (r, in), B (out, r)
FFA_GLOBAL = {
    A_KEY: np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32),  # the shared random initialisation
    B_KEY: np.zeros((4, 2), dtype=np.float32),
}


def trained_b(seed: int) -> dict[str, np.ndarray]:
    """What an FFA node sends: its trained B, nothing else."""
    return {B_KEY: np.random.default_rng(seed).standard_normal((4, 2)).astype(np.float32)}


def test_ffa_merges_the_exact_weighted_mean_of_the_nodes_products_b_times_a():
    strategy = build_strategy(AggregationConfig(), min_nodes=3, lora_variant="ffa")
    start_round(strategy, FFA_GLOBAL, 3)
    samples = {1: 10.0, 2: 20.0, 3: 25.0}
    arrays, _ = strategy.aggregate_train(1, [reply(i, trained_b(i), samples[i]) for i in samples])
    assert not any(r.rejected for r in strategy.rounds[1].replies)
    assert list(arrays) == [A_KEY, B_KEY]  # the whole adapter goes on as the next global
    a = FFA_GLOBAL[A_KEY]
    np.testing.assert_array_equal(arrays[A_KEY].numpy(), a)  # A is the global's, bitwise
    expected = sum(w * (trained_b(i)[B_KEY] @ a) for i, w in samples.items()) / sum(samples.values())
    np.testing.assert_allclose(arrays[B_KEY].numpy() @ a, expected, rtol=1e-5, atol=1e-6)


def test_plain_lora_averages_a_and_b_separately_which_is_not_the_mean_of_the_nodes_products():
    # The counterexample: one 1x1 layer, node 1 sends (A, B) = (1, 1), node 2 (3, 3), equal weights.
    # The mean of their products is (1*1 + 3*3) / 2 = 5; the product of the means FedAvg builds is 2 * 2 = 4.
    zero = {A_KEY: np.zeros((1, 1), np.float32), B_KEY: np.zeros((1, 1), np.float32)}
    strategy = build_strategy(AggregationConfig(), min_nodes=2)
    start_round(strategy, zero, 2)
    nodes = {
        i: {A_KEY: np.full((1, 1), v, np.float32), B_KEY: np.full((1, 1), v, np.float32)} for i, v in [(1, 1), (2, 3)]
    }
    arrays, _ = strategy.aggregate_train(1, [reply(i, arrays, 10) for i, arrays in nodes.items()])
    merged_product = float((arrays[B_KEY].numpy() @ arrays[A_KEY].numpy())[0, 0])
    mean_of_products = float(np.mean([(n[B_KEY] @ n[A_KEY])[0, 0] for n in nodes.values()]))
    assert (merged_product, mean_of_products) == (pytest.approx(4.0), pytest.approx(5.0))


FFA_RULE = "(lora-variant ffa: a reply carries only the trained lora_B tensors, lora_A stays as the server sent it"


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (  # a node on plain LoRA (or older code): the whole adapter
            {A_KEY: FFA_GLOBAL[A_KEY] + 0.1, **trained_b(3)},
            f"unexpected tensors: {A_KEY} {FFA_RULE}; this reply carries 1 frozen tensor(s), e.g. {A_KEY})",
        ),
        (  # A instead of B
            {A_KEY: FFA_GLOBAL[A_KEY] + 0.1},
            f"missing tensors: {B_KEY} {FFA_RULE}; this reply carries 1 frozen tensor(s), e.g. {A_KEY})",
        ),
    ],
)
def test_under_ffa_a_reply_carrying_lora_a_or_lacking_lora_b_is_refused_with_the_reason(sent, reason):
    strategy = build_strategy(AggregationConfig(), min_nodes=3, lora_variant="ffa")
    start_round(strategy, FFA_GLOBAL, 3)
    arrays, _ = strategy.aggregate_train(
        1, [reply(1, trained_b(1), 10), reply(2, trained_b(2), 10), reply(3, sent, 10)]
    )
    assert [r.rejected for r in strategy.rounds[1].replies] == ["", "", f"packed adapter refused: {reason}"]
    np.testing.assert_array_equal(arrays[A_KEY].numpy(), FFA_GLOBAL[A_KEY])
    np.testing.assert_allclose(arrays[B_KEY].numpy(), (trained_b(1)[B_KEY] + trained_b(2)[B_KEY]) / 2, rtol=1e-6)


@pytest.mark.parametrize("name", [*STRATEGIES, "dp"])
def test_every_strategy_under_ffa_checks_and_merges_the_b_half_and_keeps_a(name):
    dp = AggregationConfig(dp_noise_multiplier=1e-6, dp_clipping_norm=0.5)
    strategy = build_strategy(dp if name == "dp" else AggregationConfig(strategy=name), min_nodes=4, lora_variant="ffa")
    start_round(strategy, FFA_GLOBAL, 4)
    arrays, _ = strategy.aggregate_train(1, [reply(i, trained_b(i), 10) for i in (1, 2, 3, 4)])
    log = strategy.rounds[1]
    assert not any(r.rejected for r in log.replies)
    # The norm rules judge the update the node sent: B alone (the global B is zero).
    assert [r.update_norm for r in log.replies] == pytest.approx(
        [np.linalg.norm(trained_b(i)[B_KEY]) for i in (1, 2, 3, 4)]
    )
    assert list(arrays) == [A_KEY, B_KEY]
    np.testing.assert_array_equal(arrays[A_KEY].numpy(), FFA_GLOBAL[A_KEY])
    assert np.isfinite(arrays[B_KEY].numpy()).all()
    if name == "dp":  # the wrapper clipped each B update (norms near 2.8) to 0.5 before averaging
        assert list(strategy.inner.current_arrays) == [B_KEY]
        assert np.linalg.norm(arrays[B_KEY].numpy()) <= 0.5 + 1e-4


def test_under_ffa_instructions_still_carry_the_whole_adapter():
    strategy = build_strategy(AggregationConfig(), min_nodes=2, lora_variant="ffa")
    record = ArrayRecord({k: torch.from_numpy(v) for k, v in FFA_GLOBAL.items()})
    for msg in strategy.configure_train(1, record, ConfigRecord({}), NodesOnlyGrid(2)):
        got = unpack_content(msg.content, {k: v.shape for k, v in FFA_GLOBAL.items()}, "float32")
        assert all(np.array_equal(got[k], v) for k, v in FFA_GLOBAL.items())


def test_describe_names_how_the_adapter_factors_were_merged():
    plain, ffa = describe(AggregationConfig()), describe(AggregationConfig(), "ffa")
    assert plain["lora_merge"].startswith("LoRA: A and B averaged separately (approximate")
    assert ffa["lora_merge"].startswith("FFA-LoRA: A frozen at its initialisation, only B trained and averaged")
    assert ffa["method"].startswith("FedAvg weighted by samples") and ffa["method"].endswith(ffa["lora_merge"])
    with pytest.raises(ValueError, match="lora-variant must be one of lora, ffa"):
        describe(AggregationConfig(), "dora")
