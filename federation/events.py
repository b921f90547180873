"""The ServerApp -> site round events and the node metrics inside them: one home for the keys and their bounds.

A round reaches the site in two events. ROUND records it as soon as it is merged: its nodes, their metrics, the
merged adapter's files (so it can be resumed from and downloaded). EVALUATED follows once the server has scored
the merged adapter on the held-out set: that takes seconds to minutes on the SuperLink host, and neither the
nodes nor the site wait for it. A round event may still carry its evaluation itself (`eval_loss` present): then
one event does both.

Nothing a node reports is trusted. The ServerApp (`federation.strategy.GuardedStrategy`) refuses a reply whose
metrics break these bounds before it can weigh in, and the site (`campaigns.services.reports.report_round`) checks the
whole round event again with `parse_round` before storing a row of it: the site's columns are 32/64-bit
integers, and a bound checked on both sides costs nothing.

Bounds are generous sanity limits (no honest node comes near them), not policy: how much one node may weigh in
a merge is the campaign's `AggregationConfig` (`max-examples`, `max-weight-ratio`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from federation.artifacts import ADAPTER_FILES, ROUND_FILES, SERVER_STATE
from federation.data import GROUP_PATTERN

# Event types: the "type" of each event the ServerApp sends the site (federation.report.Reporter.event). The site
# records ROUND, EVALUATED and FAILED and answers any other type with OK (the rest are for the ServerApp's journal
# and the benchmarks): a type spelt differently on one side would be acknowledged and silently dropped.
EVENT_STARTED = "started"
EVENT_ROUND = "round"
EVENT_EVALUATED = "evaluated"
EVENT_FAILED = "failed"
EVENT_FINISHED = "finished"
# A FAILED event's `kind` when the ServerApp itself failed (bad config, a bug): the site stops the campaign
# instead of resuming it, since a new run would fail the same way.
FAILURE_TRAINING = "training"

# Node metric keys (the ClientApp's MetricRecord).
NUM_EXAMPLES = "num-examples"  # the node's sample count: FedAvg's weight
TRAIN_LOSS = "train-loss"
VAL_LOSS_BEFORE = "val-loss-before"
VAL_LOSS_AFTER = "val-loss-after"
STEPS = "steps"
TOKENS = "tokens"
LOSS_TOKENS = "loss-tokens"
TRAIN_SECONDS = "train-seconds"
STARTUP_SECONDS = "startup-seconds"
LOAD_SECONDS = "load-seconds"
EVAL_SECONDS = "eval-seconds"
NODE_SECONDS = "node-seconds"
BYTES_DOWN = "bytes-down"
BYTES_UP = "bytes-up"

MAX_EXAMPLES = 10**9
MAX_TOKENS = 2 * 10**9  # the site stores tokens in a 32-bit column (max 2,147,483,647)
MAX_STEPS = 10**7
MAX_BYTES = 10**12  # per node per round; an adapter is megabytes
MAX_SECONDS = 10**7  # ~116 days
MAX_LOSS = 1e6  # cross-entropy is >= 0 and ~ln(vocabulary) for a random model
MAX_PERPLEXITY = 1e30  # exp(50) ~ 5e21: the ServerApp caps the loss it exponentiates at 50
MAX_EPSILON = 1e9
MAX_NODES_PER_ROUND = 10_000
MAX_NAME = 100  # a node's self-given name (display only; the site shows the enrolled name)
MAX_TEXT = 2_000  # error and refusal reasons are cut to this
MAX_ROUND_NUMBER = 1000  # campaigns have at most 1000 rounds
NODE_ID_LIMIT = 2**64  # Flower node ids are unsigned 64-bit
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FINGERPRINT = re.compile(r"[0-9a-f]{0,64}")


@dataclass(frozen=True)
class Bound:
    """A number's allowed range. `optional`: a non-finite value means "not known" (None), not an error: a loss
    can diverge, and an empty validation split evaluates to NaN; JSON and the site's charts cannot hold inf."""

    lo: float
    hi: float
    integer: bool = False
    optional: bool = False

    def check(self, name: str, value: Any) -> tuple[float | int | None, str]:
        """(the value to keep, "") or (None, why it is refused)."""
        if value is None and self.optional:
            return None, ""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"{name} must be a number, not {type(value).__name__}"
        if isinstance(value, float) and not math.isfinite(value):
            return (None, "") if self.optional else (None, f"{name} must be finite, not {value}")
        if self.integer and value != int(value):
            return None, f"{name} must be a whole number, not {value:g}"
        if not self.lo <= value <= self.hi:
            return None, f"{name}={value:g} is outside [{self.lo:g}, {self.hi:g}]"
        return (int(value) if self.integer else float(value)), ""


_LOSS = Bound(0.0, MAX_LOSS, optional=True)

# The server's held-out evaluation beyond its overall loss (federation.task_metrics, EvaluationConfig): the
# campaign's generation metrics, overall and per group of held-out records (a language, a topic), and each group's
# loss. Both scores are percentages: chrF as sacrebleu reports it, exact match as % of records.
CHRF = "chrf"
EXACT_MATCH = "exact-match"
TASK_METRICS = (CHRF, EXACT_MATCH)
GROUP_LOSS = "loss"
GROUP_TOKENS = "tokens"  # held-out tokens the group's loss is over
GROUP_RECORDS = "records"  # held-out records the group's generation metrics are over
MAX_TASK_RECORDS = 1000
MAX_GROUPS = 200
_SCORE = Bound(0.0, 100.0, optional=True)
GROUP_FIELDS: dict[str, Bound] = {
    GROUP_LOSS: _LOSS,
    GROUP_TOKENS: Bound(0, MAX_TOKENS, integer=True),
    GROUP_RECORDS: Bound(0, MAX_TASK_RECORDS, integer=True),
    **{metric: _SCORE for metric in TASK_METRICS},
}


@dataclass
class HeldoutScores:
    """A round's held-out evaluation beyond the overall loss, as the round event carries it (`fields()`).

    `metrics`: task metric -> score over all `records` generated for; `groups`: group -> GROUP_FIELDS values.
    Empty when the campaign names no metric and its held-out records carry no group."""

    metrics: dict[str, float | None] = field(default_factory=dict)
    records: int = 0
    groups: dict[str, dict[str, float | int | None]] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        return {"task_metrics": dict(self.metrics), "task_records": self.records, "groups": dict(self.groups)}


def _parse_scores(event: Mapping[str, Any], problems: list[str]) -> HeldoutScores:
    """The event's task_metrics, task_records and groups, checked like every other field (absent: empty)."""
    scores = HeldoutScores()
    metrics = event.get("task_metrics") or {}
    if not isinstance(metrics, Mapping) or not set(metrics) <= set(TASK_METRICS):
        problems.append(f"task_metrics must map some of {', '.join(TASK_METRICS)} to scores")
        metrics = {}
    for name, value in metrics.items():
        scores.metrics[name], problem = _SCORE.check(f"task_metrics.{name}", value)
        if problem:
            problems.append(problem)
    records, problem = Bound(0, MAX_TASK_RECORDS, integer=True).check("task_records", event.get("task_records", 0))
    scores.records = int(records or 0)
    if problem:
        problems.append(problem)
    groups = event.get("groups") or {}
    if not isinstance(groups, Mapping) or len(groups) > MAX_GROUPS:
        problems.append(f"groups must be an object of at most {MAX_GROUPS} groups")
        groups = {}
    for name, values in groups.items():
        if not (isinstance(name, str) and GROUP_PATTERN.fullmatch(name)):
            problems.append(f"group name {cut(repr(name), 80)} is not a group label (letters, digits, _.@+-)")
            continue
        if not isinstance(values, Mapping) or not set(values) <= set(GROUP_FIELDS):
            problems.append(f"groups.{name} must map some of {', '.join(GROUP_FIELDS)} to numbers")
            continue
        row: dict[str, float | int | None] = {}
        for key, value in values.items():
            row[key], problem = GROUP_FIELDS[key].check(f"groups.{name}.{key}", value)
            if problem:
                problems.append(problem)
        scores.groups[name] = row
    return scores


_SECONDS = Bound(0.0, MAX_SECONDS)
NODE_METRICS: dict[str, Bound] = {
    NUM_EXAMPLES: Bound(1, MAX_EXAMPLES, integer=True),
    TRAIN_LOSS: _LOSS,
    VAL_LOSS_BEFORE: _LOSS,
    VAL_LOSS_AFTER: _LOSS,
    STEPS: Bound(0, MAX_STEPS, integer=True),
    TOKENS: Bound(0, MAX_TOKENS, integer=True),
    LOSS_TOKENS: Bound(0, MAX_TOKENS, integer=True),
    TRAIN_SECONDS: _SECONDS,
    STARTUP_SECONDS: _SECONDS,
    LOAD_SECONDS: _SECONDS,
    EVAL_SECONDS: _SECONDS,
    NODE_SECONDS: _SECONDS,
    BYTES_DOWN: Bound(0, MAX_BYTES, integer=True),
    BYTES_UP: Bound(0, MAX_BYTES, integer=True),
}


@dataclass(frozen=True)
class NodeMetrics:
    """What a ClientApp reports for its round, by name: `record()` spells the keys, so the node side never does."""

    examples: int
    train_loss: float
    val_loss_before: float | None  # None: not measured (node-validation), left out of the reply, never sent as 0
    val_loss_after: float | None
    steps: int
    tokens: int
    loss_tokens: int
    train_seconds: float
    startup_seconds: float
    load_seconds: float
    eval_seconds: float
    node_seconds: float
    bytes_down: int
    bytes_up: int

    def record(self) -> dict[str, int | float]:
        """The MetricRecord's contents: every key in NODE_METRICS (a test holds the two together), less the
        validation losses the node did not measure."""
        record = {
            NUM_EXAMPLES: self.examples,
            TRAIN_LOSS: self.train_loss,
            VAL_LOSS_BEFORE: self.val_loss_before,
            VAL_LOSS_AFTER: self.val_loss_after,
            STEPS: self.steps,
            TOKENS: self.tokens,
            LOSS_TOKENS: self.loss_tokens,
            TRAIN_SECONDS: self.train_seconds,
            STARTUP_SECONDS: self.startup_seconds,
            LOAD_SECONDS: self.load_seconds,
            EVAL_SECONDS: self.eval_seconds,
            NODE_SECONDS: self.node_seconds,
            BYTES_DOWN: self.bytes_down,
            BYTES_UP: self.bytes_up,
        }
        return {key: value for key, value in record.items() if value is not None}


def check_metrics(metrics: Any) -> tuple[dict[str, float | int | None], list[str]]:
    """A node's metrics: (the known keys' values, problems). Unknown keys are dropped: a newer ClientApp may
    send more, and nothing unbounded goes on into the report."""
    if not isinstance(metrics, Mapping):
        return {}, [f"metrics must be an object, not {type(metrics).__name__}"]
    clean: dict[str, float | int | None] = {}
    problems: list[str] = []
    for key, bound in NODE_METRICS.items():
        if key in metrics:
            value, problem = bound.check(key, metrics[key])
            if problem:
                problems.append(problem)
            else:
                clean[key] = value
    return clean, problems


def cut(text: Any, limit: int = MAX_TEXT) -> str:
    text = text if isinstance(text, str) else repr(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class NodeRow:
    """One node's line of a round event, as far as it could be read. `problems` non-empty: the row is not
    trusted, and the site records it as that node's error (or on the round, when not even its id is readable)."""

    node_id: int | None
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    fingerprint: str = ""
    error: str = ""
    rejected: str = ""
    update_norm: float | None = None
    data_value: float | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class Evaluation:
    """A round's held-out evaluation as the site reads it (`parse_evaluation`, or inside a round event)."""

    round: int
    eval_loss: float | None
    eval_perplexity: float | None
    scores: HeldoutScores = field(default_factory=HeldoutScores)


@dataclass
class RoundEvent:
    round: int
    train_loss: float | None
    epsilon: float | None
    delta: float | None
    seconds: float | None
    adapter_files: dict[str, str]  # file name -> sha256 of the round's files the ServerApp saved (ROUND_FILES)
    nodes: list[NodeRow]
    evaluation: Evaluation | None = None  # None: the evaluation follows in its own EVALUATED event


@dataclass
class RoundReport:
    """The ServerApp's side of a round event (a merged round): what it sends (`payload()`), which `parse_round`
    reads back into a RoundEvent on the site. The fields the site does not store (timings) are for the journal and
    the benchmarks. `nodes` are the strategy's per-node reports as plain dicts (federation.strategy.NodeReport)."""

    round: int
    adapter_files: dict[str, str]
    seconds: float
    timings: dict[str, float | None]  # epoch seconds on the SuperLink host: where the round's wall time went
    train: dict[str, float | None] = field(default_factory=dict)  # the merged training metrics (TRAIN_LOSS, ...)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    epsilon: float | None = None
    delta: float | None = None

    def payload(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (
            "round", "adapter_files", "seconds", "timings", "train", "nodes", "epsilon", "delta",
        )}  # fmt: skip


@dataclass
class EvaluationReport:
    """The ServerApp's side of an EVALUATED event: the merged adapter of `round` scored on the held-out set.
    `parse_evaluation` reads it back into an Evaluation; eval_tokens and timings are for the journal."""

    round: int
    eval_loss: float | None
    eval_perplexity: float | None
    eval_tokens: int
    timings: dict[str, float | None]
    scores: HeldoutScores = field(default_factory=HeldoutScores)

    def payload(self) -> dict[str, Any]:
        body = {name: getattr(self, name) for name in (
            "round", "eval_loss", "eval_perplexity", "eval_tokens", "timings",
        )}  # fmt: skip
        return body | self.scores.fields()


class EventError(ValueError):
    """The round event itself (not one node's row) is unusable; the message names every bad field."""


def _node_row(raw: Any) -> NodeRow:
    if not isinstance(raw, Mapping):
        return NodeRow(None, problems=[f"a node row must be an object, not {type(raw).__name__}"])
    node_id = raw.get("node_id")
    if isinstance(node_id, bool) or not isinstance(node_id, int) or not 0 <= node_id < NODE_ID_LIMIT:
        return NodeRow(None, problems=[f"node_id {cut(repr(node_id), 40)} is not a Flower node id"])
    row = NodeRow(node_id)
    row.error = cut(raw.get("error") or "")
    row.rejected = cut(raw.get("rejected") or "")
    if not row.error:  # a failed node sent nothing: no metrics to check
        row.metrics, row.problems = check_metrics(raw.get("metrics") or {})
    fingerprint = raw.get("fingerprint") or ""
    if isinstance(fingerprint, str) and _FINGERPRINT.fullmatch(fingerprint):
        row.fingerprint = fingerprint
    else:
        row.problems.append(f"fingerprint {cut(repr(fingerprint), 80)} is not a sha256 hex digest")
    for name, bound in (("update_norm", Bound(0.0, math.inf, optional=True)), ("data_value", Bound(-1.001, 1.001))):
        value = raw.get(name)
        if value is None:
            continue
        checked, problem = bound.check(name, value)
        if problem:
            row.problems.append(problem)
        setattr(row, name, checked)
    return row


def _round_number(event: Mapping[str, Any], num_rounds: int, problems: list[str]) -> int:
    number = event.get("round")
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= num_rounds:
        problems.append(f"round must be a whole number in [0, {num_rounds}], not {cut(repr(number), 40)}")
        return -1
    return number


def _evaluation(event: Mapping[str, Any], number: int, problems: list[str]) -> Evaluation:
    values: dict[str, float | int | None] = {}
    for name, bound in (("eval_loss", _LOSS), ("eval_perplexity", Bound(0.0, MAX_PERPLEXITY, optional=True))):
        values[name], problem = bound.check(name, event.get(name))
        if problem:
            problems.append(problem)
    return Evaluation(round=number, scores=_parse_scores(event, problems), **values)  # type: ignore[arg-type]


def parse_evaluation(event: Any, *, num_rounds: int = MAX_ROUND_NUMBER) -> Evaluation:
    """Check an EVALUATED event field by field; raises EventError naming every bad field."""
    if not isinstance(event, Mapping):
        raise EventError("an evaluation event must be an object")
    problems: list[str] = []
    number = _round_number(event, num_rounds, problems)
    if "eval_loss" not in event:
        problems.append("eval_loss is missing (null when the loss is not finite)")
    evaluation = _evaluation(event, number, problems)
    if problems:
        raise EventError("; ".join(problems))
    return evaluation


def parse_round(event: Any, *, num_rounds: int = MAX_ROUND_NUMBER) -> RoundEvent:
    """Check a round event field by field. Raises EventError for the event's own fields (the ServerApp's, sent
    once per round); a bad node row does not fail the event: it comes back with its `problems`. An event that
    carries `eval_loss` carries the round's evaluation too (`RoundEvent.evaluation`)."""
    if not isinstance(event, Mapping):
        raise EventError("a round event must be an object")
    problems: list[str] = []
    number = _round_number(event, num_rounds, problems)
    values: dict[str, float | int | None] = {}
    train = event.get("train") or {}
    if not isinstance(train, Mapping):
        problems.append("train must be an object")
        train = {}
    for name, value, bound in (
        ("train_loss", train.get(TRAIN_LOSS), _LOSS),
        ("epsilon", event.get("epsilon"), Bound(0.0, MAX_EPSILON, optional=True)),
        ("delta", event.get("delta"), Bound(0.0, 1.0, optional=True)),
        ("seconds", event.get("seconds"), Bound(0.0, MAX_SECONDS, optional=True)),
    ):
        values[name], problem = bound.check(name, value)
        if problem:
            problems.append(problem)
    files = event.get("adapter_files")
    if not (
        isinstance(files, Mapping)
        and set(ADAPTER_FILES) <= set(files) <= set(ROUND_FILES)
        and all(isinstance(v, str) and _HEX64.fullmatch(v) for v in files.values())
    ):
        problems.append(
            f"adapter_files must map {' and '.join(ADAPTER_FILES)} (and may map {SERVER_STATE}, nothing else) "
            "to their sha256 (64 hex digits)"
        )
        files = {}
    nodes = event.get("nodes") or []
    if not isinstance(nodes, list) or len(nodes) > MAX_NODES_PER_ROUND:
        problems.append(f"nodes must be a list of at most {MAX_NODES_PER_ROUND} rows")
        nodes = []
    evaluation = _evaluation(event, number, problems) if "eval_loss" in event else None
    if problems:
        raise EventError("; ".join(problems))
    return RoundEvent(
        round=number,
        adapter_files=dict(files),
        nodes=[_node_row(raw) for raw in nodes],
        evaluation=evaluation,
        **values,  # type: ignore[arg-type]
    )
