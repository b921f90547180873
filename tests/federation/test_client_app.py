"""The ClientApp in-process on the tiny model: the packed instruction in, a packed reply out, a bad layout answered
with an error reply that says what was wrong."""

from __future__ import annotations

import sys

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from federation.config import AggregationConfig, TrainConfig
from federation.control import APP_DIR
from federation.lora_variants import trained_keys
from federation.packing import LAYOUT_KEY, PACKED_KEY, wire_bytes
from federation.strategy import build_strategy
from federation.task import get_adapter_state, lora_model

CFG = TrainConfig(local_steps=1, seq_len=32, batch_size=1, threads=1, max_eval_records=2)


@pytest.fixture(autouse=True)
def _identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = None


@pytest.fixture(scope="module")
def train_round():
    sys.path.insert(0, str(APP_DIR))
    try:
        from bayanihan_app.client_app import train_round
    finally:
        sys.path.remove(str(APP_DIR))
    return train_round


class OneNode:
    def get_node_ids(self) -> list[int]:
        return [5]


def instruction(checkpoint, dtype: str):
    strategy = build_strategy(AggregationConfig(), min_nodes=1, transfer_dtype=dtype)
    start = ArrayRecord(get_adapter_state(lora_model(str(checkpoint), CFG)))
    [msg] = strategy.configure_train(1, start, ConfigRecord({}), OneNode())
    return strategy, msg


def context(checkpoint, corpus, dtype: str) -> Context:
    run_config = {**CFG.to_run_config(), "transfer-dtype": dtype, "base-model-path": str(checkpoint)}
    node_config = {"data-path": str(corpus / "node-1"), "name": "node-1"}
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config=run_config)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_round_goes_in_and_out_packed_and_the_server_accepts_the_reply(
    train_round, tiny_checkpoint, tiny_corpus, dtype
):
    strategy, msg = instruction(tiny_checkpoint, dtype)
    TaskIdentity.node_id = 5
    reply = train_round(msg, context(tiny_checkpoint, tiny_corpus, dtype))
    TaskIdentity.node_id = 0
    assert not reply.has_error()
    assert list(reply.content["arrays"]) == [PACKED_KEY] and LAYOUT_KEY in reply.content.config_records
    metrics = reply.content["metrics"]
    assert metrics["bytes-down"] == wire_bytes(msg.content) and metrics["bytes-up"] == wire_bytes(reply.content)
    arrays, _ = strategy.aggregate_train(1, [reply])
    assert [r.rejected for r in strategy.rounds[1].replies] == [""]
    assert {a.dtype for a in arrays.values()} == {"float32"}


def test_an_instruction_that_fails_the_layout_check_gets_an_error_reply_naming_it(
    train_round, tiny_checkpoint, tiny_corpus
):
    _, msg = instruction(tiny_checkpoint, "float16")  # the node was told float32
    TaskIdentity.node_id = 5
    reply = train_round(msg, context(tiny_checkpoint, tiny_corpus, "float32"))
    assert reply.has_error()
    assert reply.error.reason == (
        "the global adapter from the server failed its layout check: wire dtype 'float16' instead of the "
        "campaign's 'float32'"
    )


def test_an_ffa_round_sends_back_only_lora_b_half_the_adapter_and_the_server_keeps_lora_a(
    train_round, tiny_checkpoint, tiny_corpus
):
    # r=8 on square projections (q_proj, o_proj: 64 -> 64): A is (8, 64) and B (64, 8), so B is half the adapter.
    cfg = TrainConfig(**{**vars(CFG), "lora_r": 8, "target_modules": "q_proj,o_proj", "lora_variant": "ffa"})
    start = get_adapter_state(lora_model(str(tiny_checkpoint), cfg))
    strategy = build_strategy(AggregationConfig(), min_nodes=1, lora_variant=cfg.lora_variant)
    [msg] = strategy.configure_train(1, ArrayRecord(start), ConfigRecord({}), OneNode())
    ctx = context(tiny_checkpoint, tiny_corpus, "float32")
    ctx.run_config.update(cfg.to_run_config())
    TaskIdentity.node_id = 5
    reply = train_round(msg, ctx)
    TaskIdentity.node_id = 0
    assert not reply.has_error()
    names = list(reply.content[LAYOUT_KEY]["names"])
    assert names == trained_keys(start, "ffa") == [k for k in start if "lora_B" in k]
    b_elements = sum(start[k].numel() for k in names)
    assert 2 * b_elements == sum(v.numel() for v in start.values())
    up, down = (m.content["arrays"][PACKED_KEY].numpy() for m in (reply, msg))
    assert up.nbytes == 4 * b_elements and 2 * up.nbytes == down.nbytes  # float32: half the uplink

    arrays, _ = strategy.aggregate_train(1, [reply])
    assert [r.rejected for r in strategy.rounds[1].replies] == [""]
    assert list(arrays) == list(start)
    assert all(torch.equal(torch.from_numpy(arrays[k].numpy()), start[k]) for k in start if "lora_A" in k)
    assert all(not torch.equal(torch.from_numpy(arrays[k].numpy()), start[k]) for k in names)
