"""The ServerApp's report endpoints: per-campaign bearer token, idempotent rounds, safe file names."""

from __future__ import annotations

import hashlib

import pytest

from campaigns.models import BaseModel, Campaign, Round

pytestmark = pytest.mark.django_db
TOKEN = "s3cret-token"


@pytest.fixture
def campaign(tmp_path, settings) -> Campaign:
    settings.DATA_DIR = tmp_path / "data"
    base = BaseModel.objects.create(name="b", hf_id="org/b", path=str(tmp_path))
    return Campaign.objects.create(
        name="c",
        base_model=base,
        data_task="t",
        heldout_path="h",
        status=Campaign.Status.RUNNING,
        report_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
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


def post(client, campaign, body, token=TOKEN):
    return client.post(
        f"/api/v1/campaigns/{campaign.pk}/events", body, content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )  # fmt: skip


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
def test_wrong_token_is_refused(client, campaign, token):
    assert post(client, campaign, round_event(1), token=token).status_code == 403
    assert not Round.objects.exists()


def test_token_of_one_campaign_does_not_open_another(client, campaign):
    other = Campaign.objects.create(name="o", base_model=campaign.base_model, data_task="t", heldout_path="h",
                                    status=Campaign.Status.RUNNING, report_token_hash="0" * 64)  # fmt: skip
    assert post(client, other, round_event(1)).status_code == 403


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
        headers={"Authorization": f"Bearer {TOKEN}", "X-Content-SHA256": sha or hashlib.sha256(data).hexdigest()},
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
