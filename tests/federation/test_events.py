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
