"""Aggregation settings, refused updates on record with a staff flag, the contribution ledger, DP on the card."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError

from campaigns.models import BaseCheckpoint, Campaign, NodeFlag, Round
from campaigns.selectors import ledger_entries, ledger_totals, open_flags
from campaigns.services.reports import report_round
from campaigns.services.setup import campaign_create
from community.models import Node
from federation.artifacts import ADAPTER_FILES

pytestmark = pytest.mark.django_db


@pytest.fixture
def base(tmp_path) -> BaseCheckpoint:
    return BaseCheckpoint.objects.create(name="b", hf_id="org/b", path=str(tmp_path))


@pytest.fixture
def heldout(tmp_path) -> str:
    path = tmp_path / "heldout.jsonl"
    path.write_text('{"text": "x"}\n')
    return str(path)


def node(node_id: int, samples: int, *, rejected: str = "", error: str = "", value: float | None = 0.9) -> dict:
    metrics = {} if error else {
        "num-examples": samples, "tokens": 64 * samples, "train-seconds": 1.5 * samples,
        "bytes-up": 1000 + node_id, "bytes-down": 1000, "train-loss": 2.0,
    }  # fmt: skip
    return {
        "node_id": node_id, "name": f"n{node_id}", "fingerprint": "f" * 64, "metrics": metrics, "error": error,
        "rejected": rejected, "update_norm": None if error else 0.5, "data_value": None if rejected else value,
    }  # fmt: skip


def event(number: int, nodes: list[dict], epsilon: float | None = None) -> dict:
    return {"type": "round", "round": number, "eval_loss": 2.0, "nodes": nodes, "train": {}, "epsilon": epsilon,
            "delta": 1e-5 if epsilon else None, "adapter_files": dict.fromkeys(ADAPTER_FILES, "a" * 64)}  # fmt: skip


def test_campaign_create_explains_each_bad_aggregation_key(base, heldout):
    with pytest.raises(ValidationError) as info:
        campaign_create(
            name="c", base_model=base, data_task="t", heldout_path=heldout,
            aggregation={"strategy": "krum-ish", "dp-delta": 2, "noise": 1},
        )  # fmt: skip
    messages = info.value.message_dict["aggregation"]
    assert any(m.startswith("strategy must be one of fedavg, fedmedian") for m in messages)
    assert any(m.startswith("dp-delta must be in (0, 1)") for m in messages)
    assert "unknown keys: noise" in messages


def test_campaign_create_refuses_dp_on_a_robust_strategy(base, heldout):
    with pytest.raises(ValidationError, match="needs strategy fedavg"):
        campaign_create(
            name="c", base_model=base, data_task="t", heldout_path=heldout,
            aggregation={"strategy": "fedmedian", "dp-noise-multiplier": 1.0},
        )  # fmt: skip


def test_campaign_create_stores_the_full_aggregation_config(base, heldout):
    campaign = campaign_create(
        name="c", base_model=base, data_task="t", heldout_path=heldout, aggregation={"strategy": "multikrum"}
    )
    assert campaign.aggregation["strategy"] == "multikrum" and campaign.aggregation["dp-noise-multiplier"] == 0.0


def test_campaign_create_refuses_an_unknown_transfer_dtype(base, heldout):
    with pytest.raises(ValidationError) as info:
        campaign_create(name="c", base_model=base, data_task="t", heldout_path=heldout, transfer_dtype="int8")
    assert info.value.message_dict["transfer_dtype"] == ["transfer-dtype must be one of float32, float16, bfloat16"]


@pytest.fixture
def campaign(base) -> Campaign:
    for i in (1, 2, 3):  # reports name nodes by Flower id; only enrolled nodes are recorded
        Node.objects.create(name=f"n{i}", flwr_node_id=str(i))
    return Campaign.objects.create(name="c", base_model=base, data_task="t", heldout_path="h", num_rounds=2)


def test_a_refused_update_is_recorded_with_its_reason_not_counted_and_flags_the_node(campaign):
    reason = "non-finite values (NaN/inf) in lora_A"
    round_ = report_round(campaign=campaign, event=event(1, [node(1, 4), node(2, 6), node(3, 5, rejected=reason)]))
    assert (round_.participants, round_.rejected, round_.failures) == (2, 1, 0)
    assert round_.bytes_up == 1001 + 1002  # only what was aggregated
    refused = round_.participations.get(node__flwr_node_id="3")
    assert refused.rejected_reason == reason and refused.data_value is None
    [flag] = open_flags(campaign)
    assert flag.node == refused.node and reason in flag.reason and "round 1" in flag.reason

    report_round(campaign=campaign, event=event(1, [node(1, 4), node(2, 6), node(3, 5, rejected=reason)]))
    assert NodeFlag.objects.count() == 1  # a resent report does not flag twice


def test_ledger_sums_match_the_rounds(campaign):
    report_round(campaign=campaign, event=event(0, []))
    report_round(campaign=campaign, event=event(1, [node(1, 4, value=0.8), node(2, 6, value=0.6), node(3, 5)]))
    report_round(
        campaign=campaign,
        event=event(2, [node(1, 4, value=1.0), node(2, 6, error="node crashed"), node(3, 5, rejected="too big")]),
    )
    totals = {t.name: t for t in ledger_totals(campaign)}
    rounds = Round.objects.filter(campaign=campaign, number__gte=1)
    assert sum(t.bytes_up for t in totals.values()) == sum(r.bytes_up for r in rounds)
    assert sum(t.bytes_down for t in totals.values()) == sum(r.bytes_down for r in rounds)
    assert sum(t.rounds for t in totals.values()) == sum(r.participants for r in rounds)
    assert sum(t.refused for t in totals.values()) == sum(r.rejected for r in rounds)
    assert sum(t.failed for t in totals.values()) == sum(r.failures for r in rounds)
    accepted = [p for p in ledger_entries(campaign) if not p.error and not p.rejected_reason]
    assert sum(t.samples for t in totals.values()) == sum(p.samples for p in accepted) == 4 + 6 + 5 + 4
    assert sum(t.tokens for t in totals.values()) == sum(p.tokens for p in accepted)
    assert (totals["n1"].rounds, totals["n1"].samples, totals["n1"].seconds) == (2, 8, pytest.approx(12.0))
    assert totals["n1"].data_value == pytest.approx(0.9)
    assert (totals["n3"].rounds, totals["n3"].refused) == (1, 1)
    assert len(ledger_entries(campaign)) == 6  # every node in every training round, round 0 excluded


def test_dp_epsilon_and_the_ledger_reach_provenance_and_the_model_card(campaign):
    from releases.model_card import render_model_card
    from releases.provenance import campaign_provenance

    campaign.aggregation = {"dp-noise-multiplier": 1.0, "dp-clipping-norm": 0.5, "dp-delta": 1e-5}
    campaign.save()
    report_round(campaign=campaign, event=event(0, []))
    report_round(campaign=campaign, event=event(1, [node(1, 4), node(2, 6)], epsilon=4.1))
    report_round(campaign=campaign, event=event(2, [node(1, 4), node(2, 6, rejected="too big")], epsilon=6.25))

    provenance = campaign_provenance(campaign, {})
    assert provenance["privacy"]["epsilon"] == 6.25 and provenance["privacy"]["delta"] == 1e-5
    assert [r["epsilon"] for r in provenance["rounds"]] == [None, 4.1, 6.25]
    assert sorted(str(n["rejected"]) for n in provenance["rounds"][2]["nodes"]) == ["None", "too big"]
    pseudonym = {t.name: t.node for t in ledger_totals(campaign)}
    ledger = {n["node"]: n["samples"] for n in provenance["contribution_ledger"]["nodes"]}
    assert ledger == {pseudonym["n1"]: 8, pseudonym["n2"]: 6}
    assert '"n1"' not in json.dumps(provenance)  # node names stay private
    assert "cosine" in provenance["contribution_ledger"]["data_value"]

    card = render_model_card(campaign, "org/name", provenance)
    assert "ε = 6.250 at δ = 1e-05" in card
    assert "1 update(s) were refused" in card


@pytest.mark.parametrize(
    ("variant", "words"),
    [
        ("ffa", "FFA-LoRA: A frozen at its initialisation, only B trained and averaged: the merge is the exact mean"),
        ("lora", "LoRA: A and B averaged separately (approximate: the mean of products is not the product of means)"),
    ],
)
def test_provenance_and_the_model_card_say_how_the_adapter_factors_were_merged(campaign, variant, words):
    from releases.model_card import render_model_card
    from releases.provenance import campaign_provenance

    campaign.train_config = {"lora-r": 8, "lora-variant": variant}
    campaign.save()
    report_round(campaign=campaign, event=event(0, []))
    report_round(campaign=campaign, event=event(1, [node(1, 4), node(2, 6)]))

    provenance = campaign_provenance(campaign, {})
    assert provenance["campaign"]["lora_merge"].startswith(words)
    assert provenance["campaign"]["aggregation"].startswith("FedAvg weighted by samples")
    assert provenance["campaign"]["aggregation"].endswith(provenance["campaign"]["lora_merge"])
    assert words in render_model_card(campaign, "org/name", provenance)


def test_the_model_card_names_the_aggregation_method_server_optimizer_lora_merge_and_lr_scaling(campaign):
    from releases.model_card import render_model_card
    from releases.provenance import campaign_provenance

    campaign.aggregation = {"strategy": "fedavg", "server-optimizer": "sgd", "server-momentum": 0.9}
    campaign.train_config = {"lora-r": 8, "lr": 0.002, "max-lr-scale": 4.0}
    campaign.save()
    report_round(campaign=campaign, event=event(0, []))
    report_round(campaign=campaign, event=event(1, [node(1, 4), node(2, 6)]))
    card = render_model_card(campaign, "org/name", campaign_provenance(campaign, {}))
    assert "- Aggregation method: FedAvg weighted by samples" in card
    assert "- Server optimizer: server SGD with learning rate 1 and momentum 0.9 (Flower FedAvgM's rule)." in card
    assert "- LoRA merge: LoRA: A and B averaged separately (approximate" in card
    assert "- Node learning rate: 0.002, scaled by the number of nodes in each round up to 4x." in card
    assert "merged with FedAvg weighted by sample counts" not in card  # the card no longer assumes the method

    campaign.aggregation = {"server-optimizer": "sgd", "server-lr": 1.0, "server-momentum": 0.0}
    campaign.train_config = {"lora-r": 8, "lr": 0.002, "max-lr-scale": 1.0}
    campaign.save()
    card = render_model_card(campaign, "org/name", campaign_provenance(campaign, {}))
    assert "- Server optimizer: none (the merge is the new global)." in card and "0.002, unscaled." in card
