"""Console actions call the domain services, explain refusals, and leave an audit entry per staff action."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from campaigns.models import Campaign, Round
from campaigns.services.actions import campaign_cancel, campaign_launch, campaign_resume, campaign_set_card_notes
from campaigns.services.setup import campaign_create
from community.models import Contributor
from console.models import AuditEntry

pytestmark = pytest.mark.django_db


def form_data(base, heldout, **overrides):
    data = {
        "name": "Docs", "base_model": base.pk, "data_task": "python-docs", "heldout_path": heldout,
        "num_rounds": 2, "min_nodes": 2, "nodes_per_round": 0, "round_timeout": 3600, "strategy": "fedavg",
        "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
        "target_modules": "q_proj,v_proj", "local_steps": 4, "lr": 0.01, "seq_len": 64, "batch_size": 4,
        "threads": 1, "transfer_dtype": "float32", "node_validation": "after", "max_eval_records": 16,
        "lora_variant": "lora", "server_optimizer": "sgd", "server_lr": 1.0, "server_momentum": 0.0,
        "max_lr_scale": 4.0, "auto_publish": "on", "card_notes": "",
    }  # fmt: skip
    return {**data, **overrides}


def test_create_form_makes_a_draft_and_audits_it(client, staff, base, heldout):
    client.force_login(staff)
    response = client.post(
        "/console/campaigns/new", form_data(base, heldout, strategy="fedmedian", round_timeout=120, nodes_per_round=3)
    )
    campaign = Campaign.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/console/campaigns/{campaign.pk}/"
    assert campaign.status == Campaign.Status.DRAFT and campaign.created_by == staff
    assert campaign.train_config["local-steps"] == 4 and campaign.aggregation["strategy"] == "fedmedian"
    assert campaign.round_timeout == 120 and campaign.nodes_per_round == 3
    entry = AuditEntry.objects.get()
    assert (entry.actor_name, entry.action, entry.target_id) == ("staffer", "campaign.create", str(campaign.pk))


def test_create_form_sets_node_validation_and_says_what_is_wrong_with_it(client, staff, base, heldout):
    client.force_login(staff)
    response = client.post("/console/campaigns/new", form_data(base, heldout, max_eval_records=-1))
    assert response.context["form"].errors["max_eval_records"] == ["max-eval-records must be in [0, 10000]"]
    response = client.post("/console/campaigns/new", form_data(base, heldout, node_validation="both"))
    campaign = Campaign.objects.get()
    assert (campaign.train_config["node-validation"], campaign.train_config["max-eval-records"]) == ("both", 16)
    page = client.get(f"/console/campaigns/{campaign.pk}/").content.decode()
    assert "node validation both (≤ 16 records)" in page


def test_create_form_names_task_metrics_and_says_what_is_wrong_with_their_bounds(client, staff, base, heldout):
    client.force_login(staff)
    assert "chrF: character n-gram F-score" in client.get("/console/campaigns/new").content.decode()
    response = client.post("/console/campaigns/new", form_data(base, heldout, task_max_new_tokens=10_000))
    assert response.context["form"].errors["task_max_new_tokens"] == ["task-max-new-tokens must be in [1, 512]"]
    client.post("/console/campaigns/new", form_data(base, heldout, task_metrics=["chrf", "exact-match"]))
    campaign = Campaign.objects.get()
    assert campaign.evaluation == {
        "task-metrics": "chrf,exact-match",
        "task-max-records": 32,
        "task-max-new-tokens": 48,
    }


def test_create_form_offers_ffa_lora_and_the_campaign_page_names_it(client, staff, base, heldout):
    client.force_login(staff)
    assert "FFA-LoRA: A frozen at its initialisation" in client.get("/console/campaigns/new").content.decode()
    client.post("/console/campaigns/new", form_data(base, heldout, lora_variant="ffa"))
    campaign = Campaign.objects.get()
    assert campaign.train_config["lora-variant"] == "ffa"
    assert "FFA-LoRA (A frozen) r=8" in client.get(f"/console/campaigns/{campaign.pk}/").content.decode()
    response = client.post("/console/campaigns/new", form_data(base, heldout, lora_variant="dora"))
    assert response.status_code == 200 and "lora_variant" in response.context["form"].errors


def test_create_form_explains_each_merging_choice_in_one_line_and_stores_the_server_optimizer(
    client, staff, base, heldout
):
    client.force_login(staff)
    page = client.get("/console/campaigns/new").content.decode()
    for line in ("FedMedian: coordinate-wise median", "Adam: per-coordinate steps", "SGD: moves by server learning"):
        assert line in page
    client.post("/console/campaigns/new", form_data(base, heldout, server_optimizer="adam", server_lr=0.01))
    campaign = Campaign.objects.get()
    assert (campaign.aggregation["server-optimizer"], campaign.aggregation["server-lr"]) == ("adam", 0.01)
    assert "server Adam (Flower FedAdam" in client.get(f"/console/campaigns/{campaign.pk}/").content.decode()
    response = client.post(
        "/console/campaigns/new", form_data(base, heldout, server_optimizer="yogi", server_momentum=0.9, server_lr=-1)
    )
    errors = response.context["form"].errors
    assert errors["server_lr"] == ["server-lr must be a finite number > 0"]
    assert Campaign.objects.count() == 1


def test_create_form_puts_the_services_messages_on_their_fields(client, staff, base, heldout):
    client.force_login(staff)
    response = client.post(
        "/console/campaigns/new", form_data(base, heldout, lora_r=0, lr=3, num_rounds=0, heldout_path="/nope.jsonl")
    )
    assert response.status_code == 200 and not Campaign.objects.exists()
    errors = response.context["form"].errors
    assert errors["lora_r"] == ["lora-r must be >= 1"] and errors["lr"] == ["lr must be in (0, 1)"]
    # campaign_create reports train_config problems first; its other checks are shown once those are fixed
    response = client.post(
        "/console/campaigns/new", form_data(base, heldout, num_rounds=0, heldout_path="/nope", round_timeout=1)
    )
    errors = response.context["form"].errors
    assert errors["round_timeout"] == ["must be between 30 and 604800 seconds"]
    assert errors["num_rounds"] == ["must be between 1 and 1000"]
    assert errors["heldout_path"] == ["/nope: no such file"]
    assert b"must be between 1 and 1000" in response.content
    assert not AuditEntry.objects.exists()


def test_the_form_explains_each_transfer_precision_and_the_campaign_keeps_the_choice(client, staff, base, heldout):
    client.force_login(staff)
    page = client.get("/console/campaigns/new").content.decode()
    assert "float32: exact" in page and "float16: half the bytes" in page and "bfloat16: half the bytes" in page
    assert "the server merges in float32" in page
    client.post("/console/campaigns/new", form_data(base, heldout, transfer_dtype="float16"))
    campaign = Campaign.objects.get()
    assert campaign.transfer_dtype == "float16"
    assert b"adapters travel in <code>float16</code>" in client.get(f"/console/campaigns/{campaign.pk}/").content
    response = client.post("/console/campaigns/new", form_data(base, heldout, transfer_dtype="int8"))
    assert response.status_code == 200 and "transfer_dtype" in response.context["form"].errors


def test_approving_a_contributor_from_the_console_is_audited(client, staff, contributor):
    client.force_login(staff)
    client.post(f"/console/contributors/{contributor.pk}/status", {"status": "approved", "reason": "known"})
    contributor.refresh_from_db()
    assert contributor.status == Contributor.Status.APPROVED
    entry = AuditEntry.objects.get()
    assert entry.action == "contributor.approved" and entry.detail == {"reason": "known"}
    page = client.get("/console/audit/")
    assert b"contributor.approved" in page.content and b"staffer" in page.content


def test_an_unknown_status_is_refused_with_its_reason_and_not_audited(client, staff, contributor):
    client.force_login(staff)
    response = client.post(f"/console/contributors/{contributor.pk}/status", {"status": "boss"}, follow=True)
    assert b"unknown status" in response.content
    assert not AuditEntry.objects.exists()


def test_cancel_a_queued_campaign_then_resume_it(base, heldout, staff):
    campaign = campaign_create(name="c", base_model=base, data_task="t", heldout_path=heldout)
    with pytest.raises(ValidationError, match="only a queued or running"):
        campaign_cancel(campaign=campaign, by=staff)
    campaign = campaign_launch(campaign=campaign)  # its task is queued on commit: never here (no commit)
    campaign = campaign_cancel(campaign=campaign, by=staff, reason="wrong data")
    assert campaign.status == Campaign.Status.CANCELLED and campaign.is_terminal
    assert campaign.status_reason == "cancelled by staffer: wrong data"
    Round.objects.create(campaign=campaign, number=0, eval_loss=3.0)
    campaign = campaign_resume(campaign=campaign, by=staff)
    # Rounds stay until the new run is submitted: it continues from the last merged one (tests/platform/campaigns)
    assert campaign.status == Campaign.Status.QUEUED and campaign.rounds.count() == 1
    assert [(a.number, a.trigger) for a in campaign.attempts.order_by("number")] == [(1, "launch"), (2, "resume")]
    assert campaign.flwr_run_id == "" and campaign.finished_at is None and campaign.status_reason == ""
    with pytest.raises(ValidationError, match="only a failed or cancelled"):
        campaign_resume(campaign=campaign, by=staff)


def test_card_notes_are_on_the_campaign_page_and_editable_until_published(client, staff, base, heldout):
    campaign = campaign_create(name="c", base_model=base, data_task="t", heldout_path=heldout)
    client.force_login(staff)
    client.post(f"/console/campaigns/{campaign.pk}/notes", {"card_notes": "  Trained on docs only.  "})
    campaign.refresh_from_db()
    assert campaign.card_notes == "Trained on docs only."
    assert b"Trained on docs only." in client.get(f"/console/campaigns/{campaign.pk}/").content
    assert AuditEntry.objects.get().action == "campaign.card_notes"
    assert campaign_set_card_notes(campaign=campaign, notes="x").card_notes == "x"


def test_publishing_needs_a_completed_campaign(client, staff, base, heldout):
    campaign = campaign_create(name="c", base_model=base, data_task="t", heldout_path=heldout)
    client.force_login(staff)
    response = client.post(f"/console/campaigns/{campaign.pk}/publish", follow=True)
    assert b"only a completed one can be published" in response.content
    assert not AuditEntry.objects.exists()


def test_campaign_page_draws_charts_with_printed_values(client, staff, base, heldout):
    campaign = campaign_create(name="c", base_model=base, data_task="t", heldout_path=heldout)
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.RUNNING)
    Round.objects.create(campaign=campaign, number=0, eval_loss=4.5)
    Round.objects.create(
        campaign=campaign, number=1, eval_loss=4.25, train_loss=4.4, participants=2, bytes_up=2_000_000,
        bytes_down=2_000_000,
    )  # fmt: skip
    client.force_login(staff)
    live = client.get(f"/console/campaigns/{campaign.pk}/live").content.decode()
    assert live.count("<svg") == 4 and 'data-live="1"' in live
    assert "4.5000" in live and "4.2500" in live and "4.4000" in live  # values printed on the charts
    assert "Held-out eval loss per round (0 = base model)" in live and "Bytes per round (MB)" in live
    assert "round 2 of 2: nodes training" in live


def test_a_merged_round_shows_at_once_and_its_evaluation_when_it_comes(client, staff, base, heldout):
    """A round is on record when merged; the server's held-out evaluation follows (it overlaps the next round)."""
    campaign = campaign_create(name="c", base_model=base, data_task="t", heldout_path=heldout)
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.RUNNING)
    Round.objects.create(campaign=campaign, number=0, eval_loss=4.5, evaluated_at=timezone.now())
    merged = Round.objects.create(campaign=campaign, number=1, train_loss=4.4, participants=2)
    client.force_login(staff)
    live = client.get(f"/console/campaigns/{campaign.pk}/live").content.decode()
    assert 'data-round="1"' in live and "evaluating…" in live
    assert "round 2 of 2: nodes training (round 1 being evaluated)" in live
    assert "evaluating…" in client.get("/console/").content.decode()  # the dashboard's last rounds
    Round.objects.filter(pk=merged.pk).update(eval_loss=4.25, eval_perplexity=70.1, evaluated_at=timezone.now())
    live = client.get(f"/console/campaigns/{campaign.pk}/live").content.decode()
    assert "evaluating…" not in live and "4.2500" in live and "(round 1 being evaluated)" not in live


def test_campaign_page_charts_task_metrics_per_round_and_each_group_before_and_after(client, staff, base, heldout):
    campaign = campaign_create(
        name="c", base_model=base, data_task="l10n", heldout_path=heldout, evaluation={"task-metrics": "chrf"}
    )
    groups = lambda chrf_id, chrf_sw: {  # noqa: E731
        "id": {"loss": 2.0, "tokens": 50, "records": 4, "chrf": chrf_id},
        "sw": {"loss": 3.0, "tokens": 50, "records": 4, "chrf": chrf_sw},
    }
    Round.objects.create(campaign=campaign, number=0, eval_loss=4.5, task_metrics={"chrf": 12.5},
                         group_metrics=groups(20.0, 5.0))  # fmt: skip
    Round.objects.create(campaign=campaign, number=1, eval_loss=4.25, participants=2, task_metrics={"chrf": 31.25},
                         group_metrics=groups(47.0, 15.5))  # fmt: skip
    client.force_login(staff)
    live = client.get(f"/console/campaigns/{campaign.pk}/live").content.decode()
    assert live.count("<svg") == 4 + 3
    assert "Held-out task metrics per round (0 = base model)" in live and "31.2" in live
    assert "Per group chrF: round 0 vs 1" in live and "Per group held-out loss: round 0 vs 1" in live
    assert ">47<" in live and ">id<" in live and ">sw<" in live  # values and group labels printed


def test_campaign_page_renders_with_an_infinite_loss_on_record(client, staff, base, heldout):
    """Rounds stored before reports were bounds-checked may hold inf: the chart skips it."""
    campaign = campaign_create(name="c", base_model=base, data_task="t", heldout_path=heldout)
    Round.objects.create(campaign=campaign, number=0, eval_loss=4.5)
    Round.objects.create(campaign=campaign, number=1, eval_loss=float("inf"), train_loss=float("inf"), participants=1)
    Round.objects.create(campaign=campaign, number=2, eval_loss=4.0, train_loss=float("nan"), participants=1)
    client.force_login(staff)
    assert client.get(f"/console/campaigns/{campaign.pk}/").status_code == 200
    live = client.get(f"/console/campaigns/{campaign.pk}/live").content.decode()
    assert "4.5000" in live and "4.0000" in live  # the finite values are still drawn and printed


def test_campaign_page_shows_what_a_round_report_could_not_record(client, staff, base, heldout):
    campaign = campaign_create(name="c", base_model=base, data_task="t", heldout_path=heldout)
    Round.objects.create(
        campaign=campaign, number=0, eval_loss=4.5,
        errors=["node id 42 is not an enrolled node; its row is not recorded (<b>its update merged</b>)"],
    )  # fmt: skip
    client.force_login(staff)
    live = client.get(f"/console/campaigns/{campaign.pk}/live").content.decode()
    assert "Round 0 report: node id 42 is not an enrolled node" in live and "<b>" not in live
