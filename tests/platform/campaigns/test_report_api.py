"""The ServerApp's API: link secret + current run id, server config out of band, idempotent rounds, safe file names."""

from __future__ import annotations

import hashlib

import pytest

from campaigns.models import BaseModel, Campaign, Round

pytestmark = pytest.mark.django_db
TOKEN = "s3cret-link"  # the link secret: in the SuperLink host's file, never in the run config
RUN_ID = "4242"


@pytest.fixture
def campaign(tmp_path, settings) -> Campaign:
    settings.DATA_DIR = tmp_path / "data"
    settings.LINK_SECRET_FILE = tmp_path / "keys" / "link-secret"
    settings.LINK_SECRET_SHA256 = ""
    settings.LINK_SECRET_FILE.parent.mkdir()
    settings.LINK_SECRET_FILE.write_text(TOKEN + "\n")
    base = BaseModel.objects.create(name="b", hf_id="org/b", path=str(tmp_path / "base"))
    return Campaign.objects.create(
        name="c",
        base_model=base,
        data_task="t",
        heldout_path=str(tmp_path / "heldout.jsonl"),
        status=Campaign.Status.RUNNING,
        flwr_run_id=RUN_ID,
    )


def round_event(number: int, loss: float = 2.0) -> dict:
    node = {
        "node_id": 18446744073709551615,  # Flower ids use the full unsigned 64-bit range
        "name": "node-a",
        "fingerprint": "f" * 64,
        "metrics": {"num-examples": 10, "tokens": 640, "train-loss": loss, "bytes-up": 100, "bytes-down": 100},
        "error": "",
    }
    return {"type": "round", "round": number, "eval_loss": loss, "eval_perplexity": 7.4, "nodes": [node], "train": {}}


def post(client, campaign, body, token=TOKEN, run_id=RUN_ID):
    return client.post(
        f"/api/v1/campaigns/{campaign.pk}/events", body, content_type="application/json",
        headers={"Authorization": f"Bearer {token}", "X-Flower-Run-Id": run_id},
    )  # fmt: skip


def get_config(client, campaign, token=TOKEN, run_id=RUN_ID):
    return client.get(
        f"/api/v1/campaigns/{campaign.pk}/server-config",
        headers={"Authorization": f"Bearer {token}", "X-Flower-Run-Id": run_id},
    )


def test_server_config_gives_the_server_paths_to_the_link_secret_holder(client, campaign, settings, tmp_path):
    response = get_config(client, campaign)
    assert response.status_code == 200
    assert response.json() == {
        "base-model-path": str(tmp_path / "base"),
        "heldout-path": str(tmp_path / "heldout.jsonl"),
        "output-dir": str(settings.DATA_DIR / "campaigns" / str(campaign.pk) / "server"),
    }


@pytest.mark.parametrize(("token", "run_id"), [("", RUN_ID), ("wrong", RUN_ID), (TOKEN, ""), (TOKEN, "4243")])
def test_server_config_needs_the_link_secret_and_the_current_run(client, campaign, token, run_id):
    response = get_config(client, campaign, token=token, run_id=run_id)
    assert response.status_code == 403
    assert "path" not in response.content.decode()


def test_server_config_waits_while_the_run_is_being_submitted(client, campaign):
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.QUEUED, flwr_run_id="")
    response = get_config(client, campaign)
    assert response.status_code == 503 and response["Retry-After"]


def test_split_hosts_check_the_secret_against_its_hash(client, campaign, settings):
    settings.LINK_SECRET_FILE = settings.LINK_SECRET_FILE.parent / "absent"  # the site has no copy of the file
    settings.LINK_SECRET_SHA256 = hashlib.sha256(b"other-secret").hexdigest()
    assert post(client, campaign, round_event(1)).status_code == 403
    assert post(client, campaign, round_event(1), token="other-secret").status_code == 200


def test_round_report_is_recorded_with_its_participants(client, campaign):
    assert post(client, campaign, round_event(1)).status_code == 200
    round_ = Round.objects.get(campaign=campaign, number=1)
    assert (round_.participants, round_.bytes_up, round_.eval_loss) == (1, 100, 2.0)
    participation = round_.participations.get()
    assert participation.node.flwr_node_id == "18446744073709551615"
    assert (participation.samples, participation.tokens) == (10, 640)


def test_resent_round_report_overwrites_instead_of_duplicating(client, campaign):
    post(client, campaign, round_event(1, loss=3.0))
    post(client, campaign, round_event(1, loss=2.5))
    assert Round.objects.filter(campaign=campaign).count() == 1
    assert Round.objects.get(campaign=campaign).eval_loss == 2.5
    assert Round.objects.get(campaign=campaign).participations.count() == 1


@pytest.mark.parametrize("token", ["", "wrong", TOKEN + "x"])
def test_report_without_the_link_secret_is_refused(client, campaign, token):
    assert post(client, campaign, round_event(1), token=token).status_code == 403
    assert not Round.objects.exists()


def test_report_without_a_bearer_scheme_is_refused(client, campaign):
    response = client.post(
        f"/api/v1/campaigns/{campaign.pk}/events", round_event(1), content_type="application/json",
        headers={"Authorization": TOKEN, "X-Flower-Run-Id": RUN_ID},
    )  # fmt: skip
    assert response.status_code == 403 and not Round.objects.exists()


def test_run_of_one_campaign_does_not_open_another(client, campaign):
    other = Campaign.objects.create(name="o", base_model=campaign.base_model, data_task="t", heldout_path="h",
                                    status=Campaign.Status.RUNNING, flwr_run_id="99")  # fmt: skip
    assert post(client, other, round_event(1)).status_code == 403
    assert post(client, campaign, round_event(1), run_id="99").status_code == 403
    assert not Round.objects.exists()


def test_finished_campaign_accepts_no_more_reports(client, campaign):
    campaign.status = Campaign.Status.COMPLETED
    campaign.save()
    assert post(client, campaign, round_event(1)).status_code == 403


def test_malformed_event_is_a_clear_400(client, campaign):
    response = post(client, campaign, "{not json")
    assert response.status_code == 400 and "not JSON" in response.json()["error"]
    response = post(client, campaign, {"type": "round"})
    assert response.status_code == 400 and "round" in response.json()["error"]


def put_file(client, campaign, name, data: bytes, sha: str | None = None):
    return client.put(
        f"/api/v1/campaigns/{campaign.pk}/rounds/1/files/{name}", data, content_type="application/octet-stream",
        headers={"Authorization": f"Bearer {TOKEN}", "X-Flower-Run-Id": RUN_ID,
                 "X-Content-SHA256": sha or hashlib.sha256(data).hexdigest()},
    )  # fmt: skip


def test_adapter_file_upload_is_stored_and_pinned(client, campaign, settings):
    data = b"\x00safetensors bytes"
    assert put_file(client, campaign, "adapter_model.safetensors", data).status_code == 200
    stored = settings.DATA_DIR / "campaigns" / str(campaign.pk) / "round-1" / "adapter_model.safetensors"
    assert stored.read_bytes() == data
    assert Round.objects.get(campaign=campaign, number=1).adapter_files == {
        "adapter_model.safetensors": hashlib.sha256(data).hexdigest()
    }


@pytest.mark.parametrize("name", ["..%2F..%2Fsecret_key", "evil.py", ".adapter_model.safetensors.partial"])
def test_upload_refuses_anything_but_adapter_files(client, campaign, name, settings):
    response = put_file(client, campaign, name, b"x")
    assert response.status_code in {400, 404}
    assert not (settings.DATA_DIR / "secret_key").exists()


def test_upload_with_wrong_checksum_keeps_nothing(client, campaign, settings):
    response = put_file(client, campaign, "adapter_config.json", b"{}", sha="0" * 64)
    assert response.status_code == 400 and "sha256" in response.json()["error"]
    assert not list((settings.DATA_DIR / "campaigns" / str(campaign.pk) / "round-1").iterdir())


def test_upload_over_the_size_limit_is_refused(client, campaign, settings):
    settings.MAX_ADAPTER_UPLOAD_BYTES = 10
    response = put_file(client, campaign, "adapter_model.safetensors", b"x" * 11)
    assert response.status_code == 400 and "larger" in response.json()["error"]
