"""ClientApp: receive the global adapter, train on this node's own data, send the adapter back."""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from federation.config import TrainConfig, WireConfig
from federation.events import NodeMetrics
from federation.lora_variants import trained_keys
from federation.node_data import node_dataset
from federation.packing import LAYOUT_KEY, PackingError, pack_records, unpack_content, wire_bytes
from federation.task import evaluate, get_adapter_state, reusable_lora_model, set_adapter_state, train
from federation.warm_protocol import launched_at

app = ClientApp()


@app.train()
def train_round(msg: Message, context: Context) -> Message:
    entered = time.time()
    # Flower starts an app process per message: how long that start took is part of every round's cost. In the
    # node's warm worker, launched_at() is when that process (the shim) started, so this stays truthful.
    startup = max(0.0, entered - launched_at())
    cfg = TrainConfig.from_run_config(context.run_config)
    # The model lives on the node's disk: node config names it, else the run's path (same host).
    model_path = str(context.node_config.get("model-path") or context.run_config["base-model-path"])
    data = node_dataset(str(context.node_config["data-path"]), model_path, cfg)

    model = reusable_lora_model(model_path, cfg)  # loaded once per process (a warm worker: once per node)
    # The global adapter arrives packed (federation.packing): checked against this node's own LoRA model first.
    wire = WireConfig.from_run_config(context.run_config)
    own = {k: tuple(v.shape) for k, v in get_adapter_state(model).items()}
    try:
        received = {k: torch.from_numpy(v) for k, v in unpack_content(msg.content, own, wire.transfer_dtype).items()}
    except PackingError as exc:
        reason = f"the global adapter from the server failed its layout check: {exc}"
        return Message(error=Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
    set_adapter_state(model, received)
    loaded = time.time()
    # Validation as the campaign asks (node-validation); a loss not measured is left out of the reply, never 0.
    validation: dict[str, float] = {}
    if cfg.node_validation == "both":
        validation["before"] = evaluate(model, data.val, data.pad_id)[0]
    # A resumed campaign is a new Flower run counting from 1 again: seed by the campaign's round, not Flower's.
    campaign_round = int(msg.content["config"]["server-round"]) + int(context.run_config.get("start-round", 0))
    # The round's learning rate: lr scaled by how many nodes this round averages, within max-lr-scale.
    round_cfg = replace(cfg, lr=cfg.round_lr(msg.content["config"]))
    result = train(model, data.train, round_cfg, data.pad_id, round_seed=campaign_round)
    if cfg.node_validation != "none":
        validation["after"] = evaluate(model, data.val, data.pad_id)[0]
    evaluated = time.time()

    # The reply carries the tensors this campaign's LoRA variant trains, and only those: the whole adapter for
    # "lora", the lora_B half for "ffa" (A stayed what the server sent; the server merges it back itself).
    trained = get_adapter_state(model)
    state = {k: trained[k] for k in trained_keys(trained, cfg.lora_variant)}
    arrays, layout = pack_records({k: v.numpy() for k, v in state.items()}, wire.transfer_dtype)
    reply = RecordDict({"arrays": arrays, LAYOUT_KEY: layout})
    metrics = MetricRecord(
        NodeMetrics(
            examples=result.examples,
            train_loss=result.loss,
            val_loss_before=validation.get("before"),
            val_loss_after=validation.get("after"),
            steps=result.steps,
            tokens=result.tokens,
            loss_tokens=result.loss_tokens,
            train_seconds=result.seconds,
            # Where the rest of the node's time went (benchmarks and the console read these).
            startup_seconds=startup,
            load_seconds=loaded - entered,
            # Two clocks (time.time around, perf_counter inside train): never below 0, which the server refuses.
            eval_seconds=max(0.0, evaluated - loaded - result.seconds),
            node_seconds=time.time() - entered + startup,
            # What the adapter took on the wire each way: the packed array and its layout.
            bytes_down=wire_bytes(msg.content),
            bytes_up=wire_bytes(reply),
        ).record()
    )
    # Strings cannot go in a MetricRecord; FedAvg ignores ConfigRecords in replies.
    node = ConfigRecord({"name": str(context.node_config.get("name", "")), "fingerprint": data.fingerprint})
    reply["metrics"], reply["node"] = metrics, node
    return Message(content=reply, reply_to=msg)
