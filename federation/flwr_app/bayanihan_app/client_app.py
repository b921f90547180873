"""ClientApp: receive the global adapter, train on this node's own data, send the adapter back."""

from __future__ import annotations

import time

import psutil
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federation.attack import apply_attack
from federation.config import TrainConfig
from federation.node_data import node_dataset
from federation.task import evaluate, get_adapter_state, lora_model, set_adapter_state, train

app = ClientApp()


@app.train()
def train_round(msg: Message, context: Context) -> Message:
    entered = time.time()
    # Flower starts an app process per message: how long that start took is part of every round's cost.
    startup = max(0.0, entered - psutil.Process().create_time())
    cfg = TrainConfig.from_run_config(context.run_config)
    # The model lives on the node's disk: node config names it, else the run's path (same host).
    model_path = str(context.node_config.get("model-path") or context.run_config["base-model-path"])
    data = node_dataset(str(context.node_config["data-path"]), model_path, cfg)

    model = lora_model(model_path, cfg)
    received = msg.content["arrays"]
    set_adapter_state(model, received.to_torch_state_dict())
    loaded = time.time()
    # Validation as the campaign asks (node-validation); a loss not measured is left out of the reply, never 0.
    validation: dict[str, float] = {}
    if cfg.node_validation == "both":
        validation["val-loss-before"] = evaluate(model, data.val, data.pad_id)[0]
    # A resumed campaign is a new Flower run counting from 1 again: seed by the campaign's round, not Flower's.
    campaign_round = int(msg.content["config"]["server-round"]) + int(context.run_config.get("start-round", 0))
    result = train(model, data.train, cfg, data.pad_id, round_seed=campaign_round)
    if cfg.node_validation != "none":
        validation["val-loss-after"] = evaluate(model, data.val, data.pad_id)[0]
    evaluated = time.time()

    state = get_adapter_state(model)
    attack = str(context.node_config.get("attack", ""))
    if attack:  # test/benchmark harness only: `node --attack MODE` sets it, with a loud warning
        state = apply_attack(attack, state, received.to_torch_state_dict())
    arrays = ArrayRecord(state)
    metrics = MetricRecord(
        {
            "num-examples": result.examples,
            "train-loss": result.loss,
            **validation,
            "steps": result.steps,
            "tokens": result.tokens,
            "loss-tokens": result.loss_tokens,
            "train-seconds": result.seconds,
            # Where the rest of the node's time went (benchmarks and the console read these).
            "startup-seconds": startup,
            "load-seconds": loaded - entered,
            # Two clocks (time.time around, perf_counter inside train): never below 0, which the server refuses.
            "eval-seconds": max(0.0, evaluated - loaded - result.seconds),
            "node-seconds": time.time() - entered + startup,
            "bytes-down": received.count_bytes(),
            "bytes-up": arrays.count_bytes(),
        }
    )
    # Strings cannot go in a MetricRecord; FedAvg ignores ConfigRecords in replies.
    node = ConfigRecord({"name": str(context.node_config.get("name", "")), "fingerprint": data.fingerprint})
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics, "node": node}), reply_to=msg)
