"""What every node receives (the Flower run config) holds no secret and no server path."""

from __future__ import annotations

import tomllib

import pytest

from campaigns.models import BaseCheckpoint, Campaign
from campaigns.services.runs import campaign_run_config, campaign_submit
from campaigns.services.setup import campaign_create, campaign_output_dir
from federation.control import APP_DIR

pytestmark = pytest.mark.django_db
SERVER_ONLY_KEYS = {"report-token", "report-url", "heldout-path", "output-dir", "base-model-path"}


@pytest.fixture
def campaign(tmp_path, settings) -> Campaign:
    settings.DATA_DIR = tmp_path / "data"
    heldout = tmp_path / "secret-place" / "heldout.jsonl"
    heldout.parent.mkdir()
    heldout.write_text('{"text": "x"}\n')
    base = BaseCheckpoint.objects.create(name="b", hf_id="org/b", path=str(tmp_path / "models" / "base"))
    return campaign_create(name="c", base_model=base, data_task="t", heldout_path=str(heldout), num_rounds=1)


def leaks(config: dict, campaign: Campaign, secret: str) -> list[str]:
    """Keys whose value names a server path or carries the link secret, and server-only keys."""
    server_strings = [campaign.base_model.path, campaign.heldout_path, str(campaign_output_dir(campaign)), secret]
    found = sorted(SERVER_ONLY_KEYS & set(config))
    found += [k for k, v in config.items() if isinstance(v, str) and any(s and s in v for s in server_strings)]
    found += [k for k, v in config.items() if isinstance(v, str) and ("/" in v or "token" in k or "secret" in k)]
    return found


def test_the_fab_declares_no_server_only_config():
    declared = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert not SERVER_ONLY_KEYS & set(declared)


def test_campaign_run_config_has_numbers_and_names_only(campaign, settings):
    config = campaign_run_config(campaign)
    assert config["campaign-id"] == campaign.pk and config["num-rounds"] == 1
    assert leaks(config, campaign, secret="") == []


def test_the_transfer_dtype_reaches_the_run_config_that_server_and_nodes_read(campaign):
    assert campaign.transfer_dtype == "float32" and campaign_run_config(campaign)["transfer-dtype"] == "float32"
    Campaign.objects.filter(pk=campaign.pk).update(transfer_dtype="bfloat16")
    campaign.refresh_from_db()
    assert campaign_run_config(campaign)["transfer-dtype"] == "bfloat16"


def test_the_campaigns_task_metrics_reach_the_run_config_and_bad_ones_are_refused_by_name(campaign, tmp_path):
    from django.core.exceptions import ValidationError

    assert campaign_run_config(campaign)["task-metrics"] == ""  # loss only unless the campaign names a metric
    scored = campaign_create(
        name="s", base_model=campaign.base_model, data_task="l10n", heldout_path=campaign.heldout_path,
        evaluation={"task-metrics": "chrf,exact-match", "task-max-records": 16},
    )  # fmt: skip
    config = campaign_run_config(scored)
    assert (config["task-metrics"], config["task-max-records"], config["task-max-new-tokens"]) == (
        "chrf,exact-match", 16, 48
    )  # fmt: skip
    assert leaks(config, scored, secret="") == []
    with pytest.raises(ValidationError) as err:
        campaign_create(
            name="x", base_model=campaign.base_model, data_task="t", heldout_path=campaign.heldout_path,
            evaluation={"task-metrics": "bleu", "heldout-path": "/etc"},
        )  # fmt: skip
    assert err.value.message_dict["evaluation"] == [
        "task-metrics: bleu unknown (choose from chrf, exact-match)", "unknown keys: heldout-path"
    ]  # fmt: skip


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_the_run_the_superlink_hands_to_nodes_carries_no_secret_or_path(campaign, tls_superlink, settings):
    """Submitted for real: what the SuperLink stores as the run's config (what ClientApps get) leaks nothing."""
    from flwr.common.serde import user_config_from_proto

    from bayanihan_site.superlink import superlink_client
    from federation import control

    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.QUEUED)
    assert campaign_submit(campaign_id=campaign.pk)
    campaign.refresh_from_db()
    run = control.run_record(superlink_client(), int(campaign.flwr_run_id))
    sent = user_config_from_proto(run.override_config)
    secret = settings.LINK_SECRET_FILE.read_text().strip()
    assert sent["campaign-id"] == campaign.pk
    assert leaks(sent, campaign, secret) == []
    control.stop_run(superlink_client(), int(campaign.flwr_run_id))
