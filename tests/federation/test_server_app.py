"""The ServerApp's round loop in-process (Flower's strategy, the tiny model, a grid that answers at once): each merged
round is recorded off the critical path, in order, and a failure to record one stops the run with its own error."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file

from federation.artifacts import ADAPTER_FILES, ADAPTER_WEIGHTS, ROUND_FILES, SERVER_STATE, sha256_file
from federation.config import AggregationConfig, EvaluationConfig, ServerConfig, ServerPaths, TrainConfig
from federation.control import APP_DIR
from federation.packing import LAYOUT_KEY, Layout, pack_records, unpack_content
from federation.report import Reporter

sys.path.insert(0, str(APP_DIR))
from bayanihan_app import server_app  # noqa: E402 - the FAB's package, importable from its folder


@pytest.fixture(autouse=True)
def _identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = None


class InstantGrid:
    """Two nodes that reply at once with the adapter they got, nudged; records when each round went out."""

    def __init__(self) -> None:
        self.pushed_at: list[float] = []

    def get_node_ids(self) -> list[int]:
        return [11, 12]

    def push_messages(self, messages):
        self.pushed_at.append(time.time())
        self._replies = []
        for query in messages:
            layout = Layout.from_record(query.content[LAYOUT_KEY])
            sent = unpack_content(query.content, dict(zip(layout.names, layout.shapes, strict=True)), layout.dtype)
            arrays, reply_layout = pack_records({k: v + 0.01 for k, v in sent.items()}, layout.dtype)  # as nodes do
            TaskIdentity.node_id = query.metadata.dst_node_id
            content = RecordDict({
                "arrays": arrays,
                LAYOUT_KEY: reply_layout,
                "metrics": MetricRecord({"num-examples": 10, "train-loss": 1.0, "tokens": 100}),
                "node": ConfigRecord({"name": "n", "fingerprint": "ab"}),
            })  # fmt: skip
            self._replies.append(Message(content=content, reply_to=query))
            TaskIdentity.node_id = 0
        return [m.metadata.reply_to_message_id for m in self._replies]

    def pull_messages(self, message_ids):
        replies, self._replies = self._replies, []
        return replies


class SlowReporter(Reporter):
    """Journals only (no site); reporting a round takes `delay` seconds, and round `fail_on` raises `error`."""

    def __init__(self, out: Path, delay: float = 0.0, fail_on: int | None = None, error: Exception | None = None):
        super().__init__("", "", out)
        self.delay, self.fail_on, self.error = delay, fail_on, error

    def event(self, kind: str, **payload) -> None:
        if kind == "round":
            time.sleep(self.delay)
            if payload["round"] == self.fail_on:
                raise self.error  # type: ignore[misc]
        super().event(kind, **payload)


def run_campaign(
    tmp_path: Path, tiny_checkpoint: Path, tiny_corpus: Path, reporter: Reporter, grid: InstantGrid,
    heldout: Path | None = None, evaluation: EvaluationConfig | None = None, seq_len: int = 32,
):  # fmt: skip
    train = TrainConfig(local_steps=1, seq_len=seq_len, batch_size=2, threads=1)
    server = ServerConfig(campaign_id=1, num_rounds=3, min_nodes=2, round_timeout=30, max_heldout_records=4)
    run_config = {
        **train.to_run_config(),
        **server.to_run_config(),
        **(evaluation or EvaluationConfig()).to_run_config(),
    }
    context = SimpleNamespace(run_id=7, run_config=run_config)
    paths = ServerPaths(str(tiny_checkpoint), str(heldout or tiny_corpus / "heldout.jsonl"), str(tmp_path))
    server_app.run(grid, context, server, paths, reporter, tmp_path)


def journal(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]


def test_rounds_are_recorded_in_order_while_the_next_round_already_trains(tmp_path, tiny_checkpoint, tiny_corpus):
    grid = InstantGrid()
    run_campaign(tmp_path, tiny_checkpoint, tiny_corpus, SlowReporter(tmp_path, delay=0.5), grid)
    events = journal(tmp_path)
    # Each round goes on record (merged, files saved) and then gets its evaluation: both in round order, each
    # evaluation after its round's record (the evaluator may lag: it runs at low priority beside the next rounds).
    assert [(e["type"], e.get("round")) for e in events if e["type"] == "round"] == [("round", n) for n in range(4)]
    assert [e["round"] for e in events if e["type"] == "evaluated"] == [0, 1, 2, 3]
    assert (events[0]["type"], events[-1]["type"]) == ("started", "finished") and len(events) == 10
    rounds = [e for e in events if e["type"] == "round"]
    scored = [e for e in events if e["type"] == "evaluated"]
    # Round N+1 went out to the nodes before round N was reported (reporting takes 0.5 s here).
    assert all(grid.pushed_at[n] < rounds[n]["time"] for n in range(3))
    for event, evaluation in zip(rounds, scored, strict=True):
        folder = tmp_path / f"round-{event['round']}"
        assert (folder / "adapter_model.safetensors").is_file()
        t, e = event["timings"], evaluation["timings"]
        assert t["started"] <= t["evaluate_queued"] <= t["record_started"] <= t["saved"] <= event["time"]
        # The evaluation starts only once the round is on record: recording never waits for it.
        assert event["time"] <= e["evaluate_started"] <= e["evaluated"] <= evaluation["time"]
        assert "eval_loss" not in event
    assert [len(e["nodes"]) for e in rounds] == [0, 2, 2, 2]
    assert len({e["eval_loss"] for e in scored}) == 4  # each round evaluated its own merged adapter
    assert all(e["task_metrics"] == {} and e["groups"] == {} for e in scored)  # none named, no groups


def test_each_round_and_the_base_model_are_scored_per_group_with_the_campaigns_metrics(
    tmp_path, tiny_checkpoint, tiny_corpus
):
    from federation import events as contract
    from federation.data import ALPACA_NO_INPUT  # noqa: F401 - the loader formats the prompt

    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(
        "".join(
            json.dumps({"instruction": f"Translate to {lang}: word {i}", "output": f"{lang} {i}", "group": lang}) + "\n"
            for i in range(3)
            for lang in ("id", "sw")
        )
    )
    evaluation = EvaluationConfig(task_metrics="chrf,exact-match", task_max_records=4, task_max_new_tokens=4)
    run_campaign(
        tmp_path, tiny_checkpoint, tiny_corpus, SlowReporter(tmp_path), InstantGrid(), heldout, evaluation, 128
    )
    rounds = [e for e in journal(tmp_path) if e["type"] == contract.EVENT_EVALUATED]
    assert [e["round"] for e in rounds] == [0, 1, 2, 3]
    for event in rounds:
        scores = contract.parse_evaluation(event).scores  # what the site will read
        assert set(scores.metrics) == {"chrf", "exact-match"} and scores.records == 4
        assert set(scores.groups) == {"id", "sw"}
        assert all(g["records"] == 2 and g["loss"] is not None for g in scores.groups.values())
        # The overall loss is over the first max-heldout-records (4: two of each language), split by group.
        tokens = sum(g["tokens"] for g in scores.groups.values())
        loss = sum(g["loss"] * g["tokens"] for g in scores.groups.values()) / tokens
        assert event["eval_tokens"] == tokens and event["eval_loss"] == pytest.approx(loss)


@pytest.mark.parametrize(
    "error", [RuntimeError("disk full"), requests.ConnectionError("site unreachable")], ids=["training", "infra"]
)
def test_a_round_that_cannot_be_recorded_stops_the_run_with_its_own_error(tmp_path, tiny_checkpoint, tiny_corpus,
                                                                          error):  # fmt: skip
    """server_app.main tells infrastructure (requests' errors) from training failures by the type raised here."""
    with pytest.raises(type(error), match=str(error)):
        run_campaign(tmp_path, tiny_checkpoint, tiny_corpus, SlowReporter(tmp_path, fail_on=1, error=error),
                     InstantGrid())  # fmt: skip
    events = journal(tmp_path)
    # No round 1, nothing after it, no finished.
    assert [(e["type"], e.get("round")) for e in events] == [("started", None), ("round", 0), ("evaluated", 0)]


# --- the server optimizer's state goes on record with its round, and a resume restores it ---------------------


class LocalSite(SlowReporter):
    """Journals only, and serves a resumed run the round files an earlier run saved (as the site would)."""

    def __init__(self, out: Path, earlier: Path) -> None:
        super().__init__(out)
        self.earlier = earlier

    def download_round(self, round_num: int, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for source in (self.earlier / f"round-{round_num}").iterdir():
            shutil.copyfile(source, folder / source.name)
        return folder


def run_with_optimizer(out: Path, tiny_checkpoint: Path, tiny_corpus: Path, reporter: Reporter, num_rounds: int,
                       start_round: int = 0) -> None:  # fmt: skip
    train = TrainConfig(local_steps=1, seq_len=32, batch_size=2, threads=1)
    server = ServerConfig(campaign_id=1, num_rounds=num_rounds, min_nodes=2, round_timeout=30, max_heldout_records=4,
                          start_round=start_round)  # fmt: skip
    merging = AggregationConfig(server_optimizer="adam", server_lr=0.01)
    run_config = {**train.to_run_config(), **server.to_run_config(), **merging.to_run_config()}
    context = SimpleNamespace(run_id=7, run_config=run_config)
    paths = ServerPaths(str(tiny_checkpoint), str(tiny_corpus / "heldout.jsonl"), str(out))
    server_app.run(InstantGrid(), context, server, paths, reporter, out)


def test_a_resumed_campaign_restores_the_server_optimizer_state_and_continues_exactly(
    tmp_path, tiny_checkpoint, tiny_corpus
):
    whole, first, resumed = tmp_path / "whole", tmp_path / "first", tmp_path / "resumed"
    run_with_optimizer(whole, tiny_checkpoint, tiny_corpus, SlowReporter(whole), num_rounds=3)
    rounds = [e for e in journal(whole) if e["type"] == "round"]
    # Round 0 (the starting adapter) has no optimizer state; every merged round lists its state with its adapter.
    assert [sorted(e["adapter_files"]) for e in rounds] == [sorted(ADAPTER_FILES)] + [sorted(ROUND_FILES)] * 3
    for event in rounds:
        for name, digest in event["adapter_files"].items():
            assert sha256_file(whole / f"round-{event['round']}" / name) == digest

    run_with_optimizer(first, tiny_checkpoint, tiny_corpus, SlowReporter(first), num_rounds=2)
    run_with_optimizer(resumed, tiny_checkpoint, tiny_corpus, LocalSite(resumed, first), num_rounds=3, start_round=2)
    # The round it starts from is on record already: evaluated again (in case its run stopped first), not reported.
    resumed_events = journal(resumed)
    assert [e["round"] for e in resumed_events if e["type"] == "round"] == [3]
    assert [e["round"] for e in resumed_events if e["type"] == "evaluated"] == [2, 3]
    expected = load_file(whole / "round-3" / ADAPTER_WEIGHTS)
    got = load_file(resumed / "round-3" / ADAPTER_WEIGHTS)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert load_file(resumed / "round-3" / SERVER_STATE).keys() == load_file(whole / "round-3" / SERVER_STATE).keys()

    # Without the state (a round recorded before it was kept) the optimizer starts fresh: a different round 3.
    (first / "round-2" / SERVER_STATE).unlink()
    fresh = tmp_path / "fresh"
    run_with_optimizer(fresh, tiny_checkpoint, tiny_corpus, LocalSite(fresh, first), num_rounds=3, start_round=2)
    restarted = load_file(fresh / "round-3" / ADAPTER_WEIGHTS)
    assert any(not torch.equal(restarted[k], expected[k]) for k in expected)


def test_a_rounds_files_are_what_peft_writes_for_its_merged_adapter(tmp_path, tiny_checkpoint, tiny_corpus):
    """The recorder writes a round's files without the model (the evaluator's thread owns it): byte for byte what
    PeftModel.save_pretrained writes for that adapter, so a release loads as any PEFT adapter does."""
    from federation.task import lora_model, set_adapter_state

    run_campaign(tmp_path, tiny_checkpoint, tiny_corpus, SlowReporter(tmp_path), InstantGrid())
    model = lora_model(str(tiny_checkpoint), TrainConfig(local_steps=1, seq_len=32, batch_size=2, threads=1))
    for n in (0, 3):
        folder = tmp_path / f"round-{n}"
        set_adapter_state(model, load_file(folder / ADAPTER_WEIGHTS))
        model.save_pretrained(tmp_path / f"peft-{n}")
        for name in ADAPTER_FILES:
            assert (folder / name).read_bytes() == (tmp_path / f"peft-{n}" / name).read_bytes(), (n, name)
