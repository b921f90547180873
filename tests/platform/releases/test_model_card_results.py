"""A campaign's held-out scores per group reach provenance.json and the model card, whose `model-index` the Hub's
own client (huggingface_hub.ModelCard) reads back as evaluation results."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from campaigns.models import BaseCheckpoint, Campaign
from campaigns.services.reports import report_round
from federation.artifacts import ADAPTER_FILES
from federation.events import CHRF, EXACT_MATCH, HeldoutScores
from releases.markdown_render import split_front_matter
from releases.model_card import render_model_card
from releases.provenance import campaign_provenance

pytestmark = pytest.mark.django_db


def scored_event(number: int, loss: float, chrf: dict[str, float]) -> dict:
    groups = {
        lang: {"loss": loss + i, "tokens": 100, "records": 8, CHRF: score, EXACT_MATCH: score / 10}
        for i, (lang, score) in enumerate(chrf.items())
    }
    overall = sum(chrf.values()) / len(chrf)
    scores = HeldoutScores(metrics={CHRF: overall, EXACT_MATCH: overall / 10}, records=8 * len(chrf), groups=groups)
    return {
        "type": "round", "round": number, "eval_loss": loss, "nodes": [], "train": {},
        "adapter_files": dict.fromkeys(ADAPTER_FILES, "a" * 64), **scores.fields(),
    }  # fmt: skip


@pytest.fixture
def campaign(tmp_path) -> Campaign:
    base = BaseCheckpoint.objects.create(name="b", hf_id="org/b", path=str(tmp_path), license="apache-2.0")
    campaign = Campaign.objects.create(
        name="Localization", base_model=base, data_task="l10n", heldout_path="h", num_rounds=2,
        evaluation={"task-metrics": "chrf,exact-match", "task-max-records": 16, "task-max-new-tokens": 40},
    )  # fmt: skip
    report_round(campaign=campaign, event=scored_event(0, 3.0, {"id": 20.0, "sw": 10.0}))
    report_round(campaign=campaign, event=scored_event(1, 2.5, {"id": 30.0, "sw": 12.0}))
    report_round(campaign=campaign, event=scored_event(2, 2.25, {"id": 41.5, "sw": 15.25}))
    return campaign


def test_provenance_lists_each_rounds_scores_per_group_and_the_evaluation_settings(campaign):
    provenance = campaign_provenance(campaign, {})
    assert provenance["campaign"]["evaluation_config"] == {
        "task-metrics": "chrf,exact-match", "task-max-records": 16, "task-max-new-tokens": 40,
    }  # fmt: skip
    first, last = provenance["rounds"][0], provenance["rounds"][-1]
    assert first["groups"]["id"][CHRF] == 20.0 and last["groups"]["sw"][CHRF] == 15.25
    assert last["task_metrics"][CHRF] == pytest.approx((41.5 + 15.25) / 2) and last["task_records"] == 16


def test_the_model_index_is_read_back_by_huggingface_hub_per_group(campaign):
    card = render_model_card(campaign, "community/l10n-adapter", campaign_provenance(campaign, {}))
    parsed = ModelCard(card)
    assert parsed.data.model_name == "community/l10n-adapter"
    assert parsed.data.base_model == "org/b" and "federated-learning" in parsed.data.tags  # the rest still reads
    results = {(r.dataset_config, r.metric_type): r for r in parsed.data.eval_results}
    assert results[("id", "chrf")].metric_value == 41.5
    assert results[("sw", "chrf")].metric_value == 15.25
    assert results[("sw", "exact_match")].metric_value == pytest.approx(1.52)  # rounded to 2 decimals
    assert results[("id", "loss")].metric_value == 2.25
    assert results[("all", "chrf")].metric_value == pytest.approx(28.38)
    assert results[("all", "loss")].metric_value == 2.25
    assert {r.dataset_split for r in parsed.data.eval_results} == {"heldout"}
    assert {r.task_type for r in parsed.data.eval_results} == {"text-generation"}
    assert "round 2" in results[("id", "chrf")].metric_name
    # The site's own front-matter summary keeps to the simple keys; the nested results are in the card's table.
    meta, body = split_front_matter(card)
    assert meta["base_model"] == "org/b" and "model-index" not in meta and "results" not in meta
    assert "| id | 3.0000 → 2.2500 | 20.0 → 41.5 | 2.0 → 4.2 | 8 |" in body
    assert "| **all** | 3.0000 → 2.2500 | 15.0 → 28.4 | 1.5 → 2.8 | 16 |" in body
    assert "at most 40 new tokens" in body


def test_a_campaign_without_metrics_or_groups_gets_its_loss_only(tmp_path):
    base = BaseCheckpoint.objects.create(name="p", hf_id="org/p", path=str(tmp_path))
    campaign = Campaign.objects.create(name="c", base_model=base, data_task="python-docs", heldout_path="h")
    for number, loss in ((0, 3.0), (1, 2.0)):
        report_round(campaign=campaign, event={
            "type": "round", "round": number, "eval_loss": loss, "nodes": [], "train": {},
            "adapter_files": dict.fromkeys(ADAPTER_FILES, "a" * 64),
        })  # fmt: skip
    card = render_model_card(campaign, "org/name", campaign_provenance(campaign, {}))
    [result] = ModelCard(card).data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_config) == ("loss", 2.0, "all")
    assert "### Per group" not in card
