"""ServerApp: the campaign's strategy over LoRA adapter tensors, held-out evaluation each round, progress reports."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import requests
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from safetensors.torch import load_file, save_file

from federation import events, privacy, task_heartbeat
from federation.artifacts import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    ADAPTER_WEIGHTS,
    SERVER_STATE,
    resume_folder,
    round_folder,
    sha256_file,
)
from federation.config import (
    AggregationConfig,
    EvaluationConfig,
    ServerConfig,
    ServerPaths,
    TrainConfig,
    WireConfig,
)
from federation.data import load_records
from federation.evaluator import EVALUATION_NICE, RoundEvaluator
from federation.patient_grid import PatientGrid
from federation.report import Reporter, SiteLink
from federation.server_optimizer import save_state
from federation.strategy import GuardedStrategy, build_strategy
from federation.task import (
    get_adapter_state,
    load_tokenizer,
    lora_model,
    perplexity,
    set_adapter_state,
)
from federation.task_metrics import generation_targets, group_examples, heldout_scores

app = ServerApp()
log = logging.getLogger(__name__)

# How the platform tells a training failure (it would fail again: stop the campaign) from an infrastructure one
# (resume from the last merged round): before exiting on an error of its own, the ServerApp reports a terminal
# `failed` event with kind=training. A run that ends failed without one (SuperLink restart, this process killed,
# the site or SuperLink unreachable) counts as infrastructure. Errors of the links themselves are infrastructure.
INFRASTRUCTURE_ERRORS = (httpx.HTTPError, requests.RequestException, ConnectionError, TimeoutError)


@app.main()
def main(grid: Grid, context: Context) -> None:
    # Flower's task heartbeat dies on one HTTP 500 and the run fails a minute later: make it patient first thing.
    if not task_heartbeat.guard_task_heartbeats():
        raise RuntimeError("no Flower task heartbeat found in flwr-serverapp (federation/task_heartbeat.py)")
    server = ServerConfig.from_run_config(context.run_config)
    # Paths and the report credential come out of band (the run config reaches every node): the link secret's path
    # is in the SuperLink's environment, and the site hands this run its paths.
    link = SiteLink.from_env()
    paths = link.server_paths(server.campaign_id, context.run_id)
    out = Path(paths.output_dir)
    reporter = Reporter(link.campaign_url(server.campaign_id), link.secret, out, run_id=context.run_id)
    try:
        run(grid, context, server, paths, reporter, out)
    except INFRASTRUCTURE_ERRORS:
        raise
    except Exception as exc:
        reporter.event(events.EVENT_FAILED, kind=events.FAILURE_TRAINING, reason=f"{type(exc).__name__}: {exc}"[:2000])
        raise


def initial_adapter(
    model, server: ServerConfig, reporter: Reporter, out: Path, strategy: GuardedStrategy | None = None
) -> ArrayRecord:
    """A fresh adapter, or (resuming) the merged adapter of round `start_round`, fetched from the site.

    Resuming, the server optimizer's state after that round (when the round has one) is restored into `strategy`'s
    optimizer, so the campaign continues as if it had never stopped."""
    if server.start_round:
        folder = reporter.download_round(server.start_round, resume_folder(out, server.start_round))
        state = load_file(str(folder / ADAPTER_WEIGHTS))
        expected = set(get_adapter_state(model))
        if set(state) != expected:
            raise ValueError(
                f"round {server.start_round}'s adapter does not fit this campaign's LoRA config "
                f"({len(set(state) ^ expected)} tensors differ)"
            )
        set_adapter_state(model, state)
        optimizer = strategy.optimizer if strategy is not None else None
        if optimizer is not None and (folder / SERVER_STATE).is_file():
            optimizer.load(folder / SERVER_STATE, list(get_adapter_state(model)))
            log.info("server optimizer state of round %s restored (%s steps)", server.start_round, optimizer.steps)
        elif optimizer is not None:
            # A round recorded before the state was kept, or one whose optimizer had no state yet.
            log.warning(
                "round %s has no server optimizer state (%s): the server %s optimizer starts fresh",
                server.start_round,
                SERVER_STATE,
                optimizer.name,
            )
    return ArrayRecord(get_adapter_state(model))


@dataclass(frozen=True)
class RoundJob:
    """One merged round, handed from Flower's loop to the recorder's thread and on to the evaluator's (copies only:
    Flower moves on)."""

    campaign_round: int
    state: dict[str, torch.Tensor]
    timings: dict[str, float | None]
    log: dict[str, Any]  # the round event's train, nodes, epsilon and delta
    # The server optimizer's state after this round (tensors, metadata), copied at aggregation time; None: none.
    server_state: tuple[dict[str, np.ndarray], dict[str, str]] | None = None
    # Resuming, the starting round is on record already (files and all): it is only evaluated.
    on_record: bool = False


def run(grid: Grid, context: Context, server: ServerConfig, paths: ServerPaths, reporter: Reporter, out: Path) -> None:
    cfg = TrainConfig.from_run_config(context.run_config)
    start = server.start_round
    # When Flower started this process: the gap to now is the app's start-up (imports), a per-run cost.
    process_started = psutil.Process().create_time()
    reporter.event(
        events.EVENT_STARTED,
        run_id=context.run_id,
        num_rounds=server.num_rounds,
        start_round=start,
        process_started=process_started,
    )

    model = lora_model(paths.base_model_path, cfg)
    tokenizer = load_tokenizer(paths.base_model_path)
    heldout_records = load_records(paths.heldout_path)
    # Loss over the first max-heldout-records (by group when they carry one); the generation metrics the campaign
    # names over a bounded sample of them, every group in turn (federation.task_metrics).
    evaluation_config = EvaluationConfig.from_run_config(context.run_config)
    heldout = group_examples(tokenizer, heldout_records[: server.max_heldout_records], cfg.seq_len)
    targets = (
        generation_targets(tokenizer, heldout_records, evaluation_config.task_max_records)
        if evaluation_config.metrics
        else []
    )
    aggregation = AggregationConfig.from_run_config(context.run_config)
    # Adapters travel packed in the campaign's transfer dtype; the strategy unpacks replies to float32 before
    # validating and merging, so evaluation and saving below see float32 per-tensor arrays (federation.packing).
    # Under FFA-LoRA replies carry lora_B only, and the strategy puts the global's lora_A back into every merge.
    wire = WireConfig.from_run_config(context.run_config)
    strategy = build_strategy(
        aggregation, server.min_nodes, server.nodes_per_round, wire.transfer_dtype, lora_variant=cfg.lora_variant
    )
    strategy.owners = {int(k): v for k, v in paths.node_owners.items() if k.isdigit()}
    privacy.replay(strategy.inner, rounds=start)  # DP: the earlier rounds' releases, composed again
    initial = initial_adapter(model, server, reporter, out, strategy)
    round_started = time.time()

    # The adapter's config is the same every round: written once here as PEFT writes it, then copied beside each
    # round's weights, so the recorder never touches the model (the evaluator's thread owns it).
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        adapter_config = (Path(folder) / ADAPTER_CONFIG).read_bytes()

    def record_round(job: RoundJob) -> None:
        """On the recorder's thread, in round order: save, report and upload one merged round, then hand it on to
        the evaluator. The round goes on record (ROUND event, files uploaded) without waiting for any evaluation:
        the site shows it, and a resume can continue from it, as soon as it is merged."""
        timings = {**job.timings, "record_started": time.time()}
        if not job.on_record:
            folder = round_folder(out, job.campaign_round)
            folder.mkdir(parents=True, exist_ok=True)
            # Byte for byte what model.save_pretrained writes (PEFT's own metadata), from the merged tensors.
            save_file(job.state, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
            (folder / ADAPTER_CONFIG).write_bytes(adapter_config)
            names = list(ADAPTER_FILES)
            if job.server_state is not None and save_state(folder / SERVER_STATE, *job.server_state):
                names.append(SERVER_STATE)  # kept beside the adapter: a resume from this round restores it
            # The event pins the files by sha256 before they are uploaded: the site takes only those bytes, once.
            files = {name: sha256_file(folder / name) for name in names}
            timings["saved"] = time.time()
            report = events.RoundReport(
                round=job.campaign_round,
                adapter_files=files,
                seconds=time.time() - job.timings["started"],
                timings=timings,
                **job.log,
            )
            reporter.event(events.EVENT_ROUND, **report.payload())
            for name in files:
                reporter.upload(job.campaign_round, folder / name)
        evaluator.submit(job)

    def evaluate_job(job: RoundJob) -> None:
        """On the evaluator's thread (low CPU priority), in round order: score one recorded round on the held-out
        set and report it (EVALUATED). It runs beside the next rounds' training and takes only the CPU they leave."""
        clock = {"evaluate_started": time.time()}
        set_adapter_state(model, job.state)
        loss, tokens, scores = heldout_scores(
            model, tokenizer, heldout, targets, evaluation_config.metrics, evaluation_config.task_max_new_tokens
        )
        clock["evaluated"] = time.time()
        scored = events.EvaluationReport(
            round=job.campaign_round,
            eval_loss=loss,
            eval_perplexity=perplexity(loss),
            eval_tokens=tokens,
            timings=clock,
            scores=scores,  # per-group loss and the campaign's generation metrics (empty when neither)
        )
        reporter.event(events.EVENT_EVALUATED, **scored.payload())

    # Two threads, each in round order: the recorder (normal priority: a round on record is a resume point) hands
    # every recorded round to the evaluator (niced: where the SuperLink host also trains, as in the demo, the
    # evaluation must not slow the nodes down).
    evaluator: RoundEvaluator[RoundJob] = RoundEvaluator(evaluate_job, name="evaluator", nice=EVALUATION_NICE)
    recorder: RoundEvaluator[RoundJob] = RoundEvaluator(record_round, name="recorder")

    def check() -> None:
        recorder.check()
        evaluator.check()

    def close(*, raise_error: bool = True) -> None:
        """Every round recorded, then every recorded round evaluated; then the recorder's error, else the
        evaluator's, is raised (unless `raise_error` is False)."""
        try:
            recorder.close(raise_error=False)  # its last rounds go on to the evaluator before that one stops
        finally:
            evaluator.close(raise_error=False)
        if raise_error:
            check()

    def evaluate_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Called by Strategy.start before round 1 (the starting adapter) and after every round.

        Hands the round to the evaluator and returns at once, so that the next round's instructions go out while
        this one is evaluated and recorded. Flower counts this run's rounds from 1; the campaign's round is
        `start + server_round`. Round `start` is already on record when resuming: it is not reported again, only
        evaluated (the run that recorded it may have stopped before its evaluation; the site keeps the first one).
        Returns no metrics: Flower only logs them, and the EVALUATED event carries the evaluation.
        """
        nonlocal round_started
        queued = time.time()
        log = strategy.rounds.get(server_round)
        timings = {"started": round_started, "evaluate_queued": queued}
        if log:
            timings.update(sent=log.sent_at, replies=log.replies_at, aggregated=log.aggregated_at)
        recorder.submit(
            RoundJob(
                campaign_round=start + server_round,
                # A copy: Flower reuses `arrays` as the next round's starting point while this one is evaluated.
                state={k: v.detach().clone() for k, v in arrays.to_torch_state_dict().items()},
                timings=timings,
                # Copied now (asdict copies): the strategy goes on to the next round while the evaluator reports.
                log={
                    "train": dict(log.train_metrics) if log else {},
                    "nodes": [asdict(r) for r in log.replies] if log else [],
                    "epsilon": log.epsilon if log else None,
                    "delta": log.delta if log else None,
                },
                # Taken now, with this round's arrays: the next round's step changes the optimizer in place.
                server_state=strategy.optimizer.state(list(arrays.keys())) if strategy.optimizer else None,
                on_record=server_round == 0 and bool(start),
            )
        )
        round_started = time.time()
        return None

    train_config = ConfigRecord({"campaign-id": server.campaign_id})
    try:
        strategy.start(
            # A passing HTTP 500 from the SuperLink's SQLite must not end the campaign; while it waits for replies,
            # the grid also raises the evaluator's error, so a failed round record stops the run within a poll.
            grid=PatientGrid(grid, check=check),
            initial_arrays=initial,
            num_rounds=server.num_rounds - start,
            timeout=server.round_timeout,
            train_config=train_config,
            evaluate_fn=evaluate_round,
        )
    except BaseException:
        # Rounds merged before the failure still go on record (a resume then continues after them); the error
        # raised is this one, whatever the evaluator's own.
        close(raise_error=False)
        raise
    close()  # every round reported, uploaded and evaluated (or the first error raised) before `finished`
    reporter.event(events.EVENT_FINISHED, rounds=server.num_rounds)
