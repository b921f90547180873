"""The node metrics contract: what the ClientApp sends (NodeMetrics) is what the ServerApp and the site check."""

from __future__ import annotations

import dataclasses

from federation import events


def metrics(**changes: float) -> events.NodeMetrics:
    honest = events.NodeMetrics(
        examples=10, train_loss=1.5, val_loss_before=1.7, val_loss_after=1.4, steps=3, tokens=640, loss_tokens=600,
        train_seconds=2.0, startup_seconds=0.5, load_seconds=1.0, eval_seconds=0.25, node_seconds=4.0,
        bytes_down=16, bytes_up=16,
    )  # fmt: skip
    return dataclasses.replace(honest, **changes)


def test_a_nodes_metrics_carry_every_bounded_key_and_nothing_else():
    """A field added on one side only (a new bound, or a new metric) fails here instead of being dropped."""
    assert set(metrics().record()) == set(events.NODE_METRICS)


def test_an_honest_nodes_metrics_pass_their_bounds_unchanged():
    record = metrics().record()
    assert events.check_metrics(record) == (record, [])


def test_a_validation_loss_the_node_did_not_measure_is_left_out_never_sent_as_zero():
    """node-validation "after" (the default) measures no loss before training; "none" measures neither."""
    sent = metrics(val_loss_before=None).record()
    assert events.VAL_LOSS_BEFORE not in sent and sent[events.VAL_LOSS_AFTER] == metrics().val_loss_after
    assert events.check_metrics(sent) == (sent, [])  # the server takes a missing loss as not measured
    assert not {events.VAL_LOSS_BEFORE, events.VAL_LOSS_AFTER} & set(
        metrics(val_loss_before=None, val_loss_after=None).record()
    )


def round_event(files: dict[str, str]) -> dict:
    return {"round": 1, "adapter_files": files, "nodes": []}


def test_a_round_lists_its_adapter_files_and_may_list_the_server_optimizer_state():
    from federation.artifacts import ADAPTER_FILES, SERVER_STATE

    adapter = dict.fromkeys(ADAPTER_FILES, "a" * 64)
    assert events.parse_round(round_event(adapter)).adapter_files == adapter
    with_state = {**adapter, SERVER_STATE: "b" * 64}
    assert events.parse_round(round_event(with_state)).adapter_files == with_state
    for bad in ({**adapter, "optimizer.pt": "c" * 64}, {SERVER_STATE: "b" * 64}, {**adapter, SERVER_STATE: "x"}):
        try:
            events.parse_round(round_event(bad))
        except events.EventError as exc:
            assert "adapter_files must map" in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")


def test_held_out_scores_round_trip_through_the_round_event_as_json():
    """What the ServerApp puts in the event (HeldoutScores.fields) is what the site reads back, through JSON."""
    import json

    from federation.artifacts import ADAPTER_FILES

    sent = events.HeldoutScores(
        metrics={events.CHRF: 41.5, events.EXACT_MATCH: 12.5},
        records=16,
        groups={
            "id": {events.GROUP_LOSS: 1.25, events.GROUP_TOKENS: 300, events.GROUP_RECORDS: 8, events.CHRF: 50.0},
            "sr@latin": {events.GROUP_LOSS: 2.5, events.GROUP_TOKENS: 200, events.GROUP_RECORDS: 8, events.CHRF: 33.0},
        },
    )
    event = json.loads(json.dumps({"round": 1, "eval_loss": 2.0, **sent.fields()}))
    assert events.parse_evaluation(event).scores == sent
    # An event without them (loss only, no groups) reads as empty scores.
    assert events.parse_evaluation({"round": 1, "eval_loss": 2.0}).scores == events.HeldoutScores()
    # A round event that carries its evaluation (eval_loss present) reads the same; without one, none.
    combined = {**round_event(dict.fromkeys(ADAPTER_FILES, "a" * 64)), **event}
    assert events.parse_round(combined).evaluation == events.parse_evaluation(event)
    assert events.parse_round(round_event(dict.fromkeys(ADAPTER_FILES, "a" * 64))).evaluation is None


def test_held_out_scores_out_of_bounds_or_unknown_name_the_field():
    base = {"round": 1, "eval_loss": 2.0}
    for bad, message in (
        ({"task_metrics": {"chrf": 140.0}}, "task_metrics.chrf=140 is outside [0, 100]"),
        ({"task_metrics": {"bleu": 1.0}}, "task_metrics must map some of chrf, exact-match"),
        ({"groups": {"has space": {"loss": 1.0}}}, "group name 'has space' is not a group label"),
        ({"groups": {"id": {"loss": -1.0}}}, "groups.id.loss=-1 is outside"),
        ({"groups": {"id": {"secret": 1.0}}}, "groups.id must map some of loss, tokens, records"),
        ({"groups": {f"g{i}": {} for i in range(events.MAX_GROUPS + 1)}}, "groups must be an object of at most"),
        ({"task_records": 10**6}, "task_records=1e+06 is outside"),
        ({"eval_loss": -0.5}, "eval_loss=-0.5 is outside"),
        ({"round": 1001}, "round must be a whole number in [0, 1000]"),
        ({"eval_loss": None, "eval_perplexity": "high"}, "eval_perplexity must be"),
    ):
        try:
            events.parse_evaluation({**base, **bad})
        except events.EventError as exc:
            assert message in str(exc), (message, str(exc))
        else:
            raise AssertionError(f"{bad} was accepted")
    # A diverged score is "not known", as a diverged loss is.
    assert events.parse_evaluation({**base, "task_metrics": {"chrf": float("nan")}}).scores.metrics == {"chrf": None}
    assert events.parse_evaluation({**base, "eval_loss": float("nan")}).eval_loss is None


def test_the_servers_round_report_reads_back_on_the_site_field_for_field_through_json():
    """The sending side (RoundReport, as the ServerApp fills it from the strategy's NodeReports) and the reading
    side (parse_round) agree on every field the site stores."""
    import json

    from federation.artifacts import ADAPTER_FILES, SERVER_STATE
    from federation.strategy import NodeReport

    honest = NodeReport(
        node_id=7, name="node-1", fingerprint="c" * 64, weight=12.0, update_norm=0.5, data_value=0.25,
        metrics={events.NUM_EXAMPLES: 12, events.TRAIN_LOSS: 2.5, events.TOKENS: 900, events.BYTES_UP: 3_700_000},
    )  # fmt: skip
    failed = NodeReport(node_id=2**63, name="node-2", fingerprint="", metrics={}, error="Node Unavailable")
    rejected = NodeReport(node_id=9, name="node-3", fingerprint="d" * 64, metrics={events.NUM_EXAMPLES: 3},
                          rejected="non-finite values (NaN/inf)")  # fmt: skip
    files = {**dict.fromkeys(ADAPTER_FILES, "a" * 64), SERVER_STATE: "b" * 64}
    scores = events.HeldoutScores(metrics={events.CHRF: 20.5}, records=4,
                                  groups={"sw": {events.GROUP_LOSS: 2.0, events.GROUP_TOKENS: 40}})  # fmt: skip
    sent = events.RoundReport(
        round=3, adapter_files=files, seconds=41.5, timings={"started": 1.0, "sent": 2.0},
        train={events.TRAIN_LOSS: 2.6}, epsilon=1.5, delta=1e-5,
        nodes=[dataclasses.asdict(n) for n in (honest, failed, rejected)],
    )  # fmt: skip
    got = events.parse_round(json.loads(json.dumps(sent.payload())))
    assert (got.round, got.adapter_files, got.evaluation) == (3, files, None)
    assert (got.train_loss, got.seconds) == (2.6, 41.5)
    assert (got.epsilon, got.delta) == (1.5, 1e-5)
    rows = {row.node_id: row for row in got.nodes}
    assert all(not row.problems for row in got.nodes), [row.problems for row in got.nodes]
    assert rows[7].metrics[events.TRAIN_LOSS] == 2.5 and rows[7].fingerprint == "c" * 64
    assert (rows[7].update_norm, rows[7].data_value) == (0.5, 0.25)
    assert rows[2**63].error == "Node Unavailable" and rows[9].rejected == "non-finite values (NaN/inf)"
    # Every field of the report reaches the wire: a field added on one side only fails here.
    assert set(sent.payload()) == {f.name for f in dataclasses.fields(events.RoundReport)}

    # Its evaluation follows in its own event, read back field for field the same way.
    scored = events.EvaluationReport(
        round=3, eval_loss=2.75, eval_perplexity=15.64, eval_tokens=512, timings={"evaluated": 3.0}, scores=scores
    )
    evaluation = events.parse_evaluation(json.loads(json.dumps(scored.payload())))
    assert evaluation == events.Evaluation(round=3, eval_loss=2.75, eval_perplexity=15.64, scores=scores)
    assert set(scored.payload()) == {f.name for f in dataclasses.fields(events.EvaluationReport)} - {"scores"} | set(
        scores.fields()
    )
