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
    event = json.loads(json.dumps({**round_event(dict.fromkeys(ADAPTER_FILES, "a" * 64)), **sent.fields()}))
    assert events.parse_round(event).scores == sent
    # An event without them (loss only, no groups) reads as empty scores.
    assert events.parse_round(round_event(dict.fromkeys(ADAPTER_FILES, "a" * 64))).scores == events.HeldoutScores()


def test_held_out_scores_out_of_bounds_or_unknown_name_the_field():
    from federation.artifacts import ADAPTER_FILES

    base = round_event(dict.fromkeys(ADAPTER_FILES, "a" * 64))
    for bad, message in (
        ({"task_metrics": {"chrf": 140.0}}, "task_metrics.chrf=140 is outside [0, 100]"),
        ({"task_metrics": {"bleu": 1.0}}, "task_metrics must map some of chrf, exact-match"),
        ({"groups": {"has space": {"loss": 1.0}}}, "group name 'has space' is not a group label"),
        ({"groups": {"id": {"loss": -1.0}}}, "groups.id.loss=-1 is outside"),
        ({"groups": {"id": {"secret": 1.0}}}, "groups.id must map some of loss, tokens, records"),
        ({"groups": {f"g{i}": {} for i in range(events.MAX_GROUPS + 1)}}, "groups must be an object of at most"),
        ({"task_records": 10**6}, "task_records=1e+06 is outside"),
    ):
        try:
            events.parse_round({**base, **bad})
        except events.EventError as exc:
            assert message in str(exc), (message, str(exc))
        else:
            raise AssertionError(f"{bad} was accepted")
    # A diverged score is "not known", as a diverged loss is.
    assert events.parse_round({**base, "task_metrics": {"chrf": float("nan")}}).scores.metrics == {"chrf": None}
