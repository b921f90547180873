"""ServerApp: the campaign's strategy over LoRA adapter tensors, held-out evaluation each round, progress reports."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import psutil
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from federation import task_heartbeat
from federation.config import AggregationConfig, ServerConfig, TrainConfig
from federation.data import load_records
from federation.patient_grid import PatientGrid
from federation.report import Reporter
from federation.strategy import build_strategy
from federation.task import (
    encode_all,
    evaluate,
    get_adapter_state,
    load_tokenizer,
    lora_model,
    perplexity,
    set_adapter_state,
)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # Flower's task heartbeat dies on one HTTP 500 and the run fails a minute later: make it patient first thing.
    if not task_heartbeat.guard_task_heartbeats():
        raise RuntimeError("no Flower task heartbeat found in flwr-serverapp (federation/task_heartbeat.py)")
    cfg = TrainConfig.from_run_config(context.run_config)
    server = ServerConfig.from_run_config(context.run_config)
    out = Path(server.output_dir or f"runs/{context.run_id}")
    reporter = Reporter(server.report_url, server.report_token, out)
    # When Flower started this process: the gap to now is the app's start-up (imports), a per-run cost.
    process_started = psutil.Process().create_time()
    reporter.event("started", run_id=context.run_id, num_rounds=server.num_rounds, process_started=process_started)

    model = lora_model(server.base_model_path, cfg)
    tokenizer = load_tokenizer(server.base_model_path)
    heldout = encode_all(tokenizer, load_records(server.heldout_path)[: server.max_heldout_records], cfg.seq_len)
    aggregation = AggregationConfig.from_run_config(context.run_config)
    strategy = build_strategy(aggregation, server.min_nodes, server.nodes_per_round)
    round_started = time.time()

    def evaluate_round(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Called by Strategy.start before round 1 (the base model) and after every round."""
        nonlocal round_started
        evaluate_started = time.time()
        set_adapter_state(model, arrays.to_torch_state_dict())
        loss, tokens = evaluate(model, heldout, int(tokenizer.pad_token_id))
        folder = out / f"round-{server_round}"
        model.save_pretrained(folder)  # adapter_config.json + adapter_model.safetensors only
        log = strategy.rounds.get(server_round)
        timings = {"started": round_started, "evaluate_started": evaluate_started, "evaluated": time.time()}
        if log:
            timings.update(sent=log.sent_at, replies=log.replies_at, aggregated=log.aggregated_at)
        reporter.event(
            "round",
            round=server_round,
            eval_loss=loss,
            eval_perplexity=perplexity(loss),
            eval_tokens=tokens,
            seconds=time.time() - round_started,
            train=log.train_metrics if log else {},
            nodes=[asdict(r) for r in log.replies] if log else [],
            epsilon=log.epsilon if log else None,
            delta=log.delta if log else None,
            timings=timings,  # epoch seconds on this host: where the round's wall time went
        )
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            reporter.upload(server_round, folder / name)
        round_started = time.time()
        return MetricRecord({"eval-loss": loss, "eval-perplexity": perplexity(loss)})

    train_config = ConfigRecord({"campaign-id": server.campaign_id})
    strategy.start(
        grid=PatientGrid(grid),  # a passing HTTP 500 from the SuperLink's SQLite must not end the campaign
        initial_arrays=ArrayRecord(get_adapter_state(model)),
        num_rounds=server.num_rounds,
        timeout=server.round_timeout,
        train_config=train_config,
        evaluate_fn=evaluate_round,
    )
    reporter.event("finished", rounds=server.num_rounds)
