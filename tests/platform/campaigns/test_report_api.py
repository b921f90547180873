"""The ServerApp's API: link secret + current run id, server config out of band, idempotent rounds, safe file names."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from campaigns.models import BaseCheckpoint, Campaign, Round
from community.models import Node

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
    base = BaseCheckpoint.objects.create(name="b", hf_id="org/b", path=str(tmp_path / "base"))
    return Campaign.objects.create(
        name="c",
        base_model=base,
        data_task="t",
        heldout_path=str(tmp_path / "heldout.jsonl"),
        num_rounds=2,
        status=Campaign.Status.RUNNING,
        flwr_run_id=RUN_ID,
    )


NODE_ID = 18446744073709551615  # Flower ids use the full unsigned 64-bit range


@pytest.fixture(autouse=True)
def enrolled(db) -> Node:
    return Node.objects.create(name="ana-laptop", flwr_node_id=str(NODE_ID))


FILES = {"adapter_config.json": b"{}", "adapter_model.safetensors": b"\x00safetensors bytes"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def round_event(number: int, loss: float = 2.0, files: dict[str, bytes] = FILES, **node_fields) -> dict:
    node = {
        "node_id": NODE_ID,
        "name": "node-a",
        "fingerprint": "f" * 64,
        "metrics": {"num-examples": 10, "tokens": 640, "train-loss": loss, "bytes-up": 100, "bytes-down": 100},
        "error": "",
        **node_fields,
    }
    return {
        "type": "round", "round": number, "eval_loss": loss, "eval_perplexity": 7.4, "nodes": [node], "train": {},
        "adapter_files": {name: sha(data) for name, data in files.items()},
    }  # fmt: skip


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
    from django.contrib.auth import get_user_model

    from community.models import Contributor

    owner = Contributor.objects.create(user=get_user_model().objects.create(username="ana"), display_name="ana")
    Node.objects.filter(flwr_node_id=str(NODE_ID)).update(contributor=owner)
    Node.objects.create(name="ana-2", flwr_node_id="5", contributor=owner)
    Node.objects.create(name="gone", flwr_node_id="6", contributor=owner, status=Node.Status.SUSPENDED)
    response = get_config(client, campaign)
    assert response.status_code == 200
    assert response.json() == {
        "base-model-path": str(tmp_path / "base"),
        "heldout-path": str(tmp_path / "heldout.jsonl"),
        "output-dir": str(settings.DATA_DIR / "campaigns" / str(campaign.pk) / "server"),
        # Which contributor each active node belongs to: robust strategies count one vote per contributor.
        "node-owners": {str(NODE_ID): str(owner.pk), "5": str(owner.pk)},
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


def put_file(client, campaign, name, data: bytes, sha256: str | None = None, round_number: int = 1):
    return client.put(
        f"/api/v1/campaigns/{campaign.pk}/rounds/{round_number}/files/{name}", data,
        content_type="application/octet-stream",
        headers={"Authorization": f"Bearer {TOKEN}", "X-Flower-Run-Id": RUN_ID,
                 "X-Content-SHA256": sha256 or sha(data)},
    )  # fmt: skip


def round_folder(settings, campaign, number: int = 1):
    return settings.DATA_DIR / "campaigns" / str(campaign.pk) / f"round-{number}"


def test_adapter_file_upload_is_stored_and_pinned(client, campaign, settings):
    post(client, campaign, round_event(1))
    data = FILES["adapter_model.safetensors"]
    assert put_file(client, campaign, "adapter_model.safetensors", data).status_code == 200
    assert (round_folder(settings, campaign) / "adapter_model.safetensors").read_bytes() == data
    assert Round.objects.get(campaign=campaign, number=1).adapter_files == {"adapter_model.safetensors": sha(data)}


@pytest.mark.parametrize("name", ["..%2F..%2Fsecret_key", "evil.py", ".adapter_model.safetensors.partial"])
def test_upload_refuses_anything_but_adapter_files(client, campaign, name, settings):
    post(client, campaign, round_event(1))
    response = put_file(client, campaign, name, b"x")
    assert response.status_code in {400, 404}
    assert not (settings.DATA_DIR / "secret_key").exists()


def test_upload_with_wrong_checksum_keeps_nothing(client, campaign, settings):
    post(client, campaign, round_event(1))
    response = put_file(client, campaign, "adapter_config.json", b"{}", sha256="0" * 64)
    assert response.status_code == 409 and "sha256" in response.json()["error"]
    assert not round_folder(settings, campaign).exists()


def test_upload_over_the_size_limit_is_refused(client, campaign, settings):
    settings.MAX_ADAPTER_UPLOAD_BYTES = 10
    big = b"x" * 11
    post(client, campaign, round_event(1, files={**FILES, "adapter_model.safetensors": big}))
    response = put_file(client, campaign, "adapter_model.safetensors", big)
    assert response.status_code == 400 and "larger" in response.json()["error"]
    assert not list(round_folder(settings, campaign).iterdir())


# --- a round on record never changes, and its files are the ones its event declared --------------------------


def seal(client, campaign, number: int = 1, files: dict[str, bytes] = FILES) -> None:
    """Report a round and upload its files, as the ServerApp does."""
    assert post(client, campaign, round_event(number, files=files)).status_code == 200
    for name, data in files.items():
        assert put_file(client, campaign, name, data, round_number=number).status_code == 200


def test_an_identical_resend_of_a_recorded_round_is_a_200_no_op(client, campaign):
    seal(client, campaign)
    recorded = Round.objects.get(campaign=campaign, number=1)
    response = post(client, campaign, round_event(1))  # e.g. the answer was lost in a web restart
    assert response.status_code == 200
    again = Round.objects.get(campaign=campaign, number=1)
    assert (again.pk, again.recorded_at, again.participations.get().pk) == (
        recorded.pk, recorded.recorded_at, recorded.participations.get().pk
    )  # fmt: skip


def test_a_different_event_for_a_recorded_round_is_refused(client, campaign):
    seal(client, campaign)
    forged = round_event(1, loss=0.0123, metrics={"num-examples": 999_999})
    response = post(client, campaign, forged)
    assert response.status_code == 409 and "already on record" in response.json()["error"]
    round_ = Round.objects.get(campaign=campaign, number=1)
    assert round_.eval_loss == 2.0 and round_.participations.get().samples == 10


def test_a_round_whose_files_never_arrived_is_replaced_by_a_new_event(
    client, campaign, settings, django_capture_on_commit_callbacks
):
    """The run died between the event and its files; a resumed run redoes the round with a new adapter."""
    post(client, campaign, round_event(1, loss=3.0))
    put_file(client, campaign, "adapter_config.json", FILES["adapter_config.json"])
    redone = {**FILES, "adapter_config.json": b'{"r": 8}'}
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, campaign, round_event(1, loss=2.5, files=redone)).status_code == 200
    round_ = Round.objects.get(campaign=campaign, number=1)
    assert round_.eval_loss == 2.5 and round_.participations.count() == 1
    assert round_.adapter_files == {}  # the old event's file is not the new one's
    assert not (round_folder(settings, campaign) / "adapter_config.json").exists()


def test_an_upload_before_its_round_event_is_refused(client, campaign, settings):
    response = put_file(client, campaign, "adapter_model.safetensors", FILES["adapter_model.safetensors"])
    assert response.status_code == 409 and "report the round first" in response.json()["error"]
    assert not Round.objects.exists()


def test_an_upload_must_be_the_file_the_round_event_declared(client, campaign, settings):
    post(client, campaign, round_event(1))
    evil = b"\x00her own weights"
    response = put_file(client, campaign, "adapter_model.safetensors", evil)  # honest header, other bytes
    assert response.status_code == 409
    assert not (round_folder(settings, campaign) / "adapter_model.safetensors").exists()
    assert Round.objects.get(campaign=campaign, number=1).adapter_files == {}


def test_a_stored_round_file_is_written_once(client, campaign, settings):
    seal(client, campaign)
    stored = round_folder(settings, campaign) / "adapter_model.safetensors"
    assert put_file(client, campaign, "adapter_model.safetensors", b"replacement").status_code == 409
    assert stored.read_bytes() == FILES["adapter_model.safetensors"]
    # The same bytes again (a retry) are fine, and change nothing.
    assert (
        put_file(client, campaign, "adapter_model.safetensors", FILES["adapter_model.safetensors"]).status_code == 200
    )
    assert stored.read_bytes() == FILES["adapter_model.safetensors"]


@pytest.mark.parametrize("number", [-1, 3, 10**30])
def test_an_upload_for_a_round_outside_the_campaign_is_a_clear_400(client, campaign, number):
    response = client.put(
        f"/api/v1/campaigns/{campaign.pk}/rounds/{number}/files/adapter_config.json", b"{}",
        content_type="application/octet-stream",
        headers={"Authorization": f"Bearer {TOKEN}", "X-Flower-Run-Id": RUN_ID},
    )  # fmt: skip
    assert response.status_code in {400, 404}


# --- every reported field is checked; a bad node row is that node's error, never a 500 -----------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"metrics": {"num-examples": 10, "tokens": -1}}, "tokens=-1 is outside"),
        ({"metrics": {"num-examples": 1e19}}, "num-examples=1e+19 is outside"),
        ({"metrics": {"num-examples": 10, "bytes-up": 10**30}}, "bytes-up=1e+30 is outside"),
        ({"metrics": {"num-examples": "ten"}}, "num-examples must be a number"),
        ({"metrics": {"num-examples": 10, "train-seconds": float("inf")}}, "train-seconds must be finite"),
        ({"metrics": [1, 2]}, "metrics must be an object"),
        ({"update_norm": -3.0}, "update_norm=-3 is outside"),
        ({"data_value": 7.0}, "data_value=7 is outside"),
        ({"fingerprint": "x" * 5000}, "fingerprint"),
    ],
)
def test_a_bad_node_row_is_stored_as_that_nodes_error(client, campaign, fields, reason):
    response = post(client, campaign, round_event(1, **fields))
    assert response.status_code == 200
    round_ = Round.objects.get(campaign=campaign, number=1)
    participation = round_.participations.get()
    assert participation.error.startswith("report refused by the platform") and reason in participation.error
    assert (participation.samples, participation.tokens, participation.bytes_up) == (0, 0, 0)
    assert (round_.participants, round_.failures, round_.bytes_up) == (0, 1, 0)


@pytest.mark.parametrize("node_id", [-5, 2**64, "abc", None, 1.5])
def test_a_node_row_without_a_readable_id_is_an_error_on_the_round(client, campaign, node_id):
    response = post(client, campaign, round_event(1, node_id=node_id))
    assert response.status_code == 200
    round_ = Round.objects.get(campaign=campaign, number=1)
    assert not round_.participations.exists() and "is not a Flower node id" in round_.errors[0]
    assert Node.objects.count() == 1


@pytest.mark.parametrize("number", [-1, 10**30, 3, "1", True, 1.5, None])
def test_a_round_number_outside_the_campaign_is_a_clear_400(client, campaign, number):
    response = post(client, campaign, {**round_event(1), "round": number})
    assert response.status_code == 400 and "round must be a whole number in [0, 2]" in response.json()["error"]
    assert not Round.objects.exists()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"eval_loss": "low"}, "eval_loss must be a number"),
        ({"eval_loss": -1.0}, "eval_loss=-1 is outside"),
        ({"epsilon": -2}, "epsilon=-2 is outside"),
        ({"seconds": 1e300}, "seconds=1e+300 is outside"),
        ({"nodes": {"a": 1}}, "nodes must be a list"),
        ({"train": [1]}, "train must be an object"),
        ({"adapter_files": {"adapter_model.safetensors": "0" * 64}}, "adapter_files must map"),
        ({"adapter_files": None}, "adapter_files must map"),
    ],
)
def test_a_bad_round_field_is_a_clear_400_naming_it(client, campaign, fields, reason):
    response = post(client, campaign, {**round_event(1), **fields})
    assert response.status_code == 400 and reason in response.json()["error"]
    assert not Round.objects.exists()


def test_a_deeply_nested_body_is_a_400_not_a_crash(client, campaign):
    assert post(client, campaign, "[" * 100_000).status_code == 400


# --- an infinite loss is stored as unknown, and the campaign page still renders -----------------------------


def test_an_infinite_train_loss_is_recorded_as_unknown_and_the_console_page_renders(
    client, campaign, django_user_model
):
    event = round_event(1)
    event["train"] = {"train-loss": float("inf")}  # JSON's Infinity: Python's json reads it
    event["nodes"][0]["metrics"]["train-loss"] = float("inf")
    assert post(client, campaign, event).status_code == 200
    round_ = Round.objects.get(campaign=campaign, number=1)
    assert round_.train_loss is None and round_.participations.get().train_loss is None
    client.force_login(django_user_model.objects.create_user("staff", password="x", is_staff=True))
    assert client.get(f"/console/campaigns/{campaign.pk}/").status_code == 200
    assert client.get(f"/console/campaigns/{campaign.pk}/live").status_code == 200


# --- reports name nodes by Flower id only; the enrolled row is the node --------------------------------------


def test_an_unknown_node_id_creates_no_node_and_is_an_error_on_the_round(client, campaign):
    response = post(client, campaign, round_event(1, node_id=42, name="new-friend"))
    assert response.status_code == 200
    round_ = Round.objects.get(campaign=campaign, number=1)
    assert list(Node.objects.values_list("flwr_node_id", flat=True)) == [str(NODE_ID)]
    assert not round_.participations.exists() and round_.participants == 0
    assert round_.errors == ["node id 42 is not an enrolled node; its row is not recorded (its update merged)"]


def test_a_report_never_renames_the_enrolled_node(client, campaign, enrolled):
    post(client, campaign, round_event(1, name="x" * 10_000))
    enrolled.refresh_from_db()
    assert enrolled.name == "ana-laptop" and enrolled.last_seen is not None
    assert Round.objects.get(campaign=campaign, number=1).participations.get().node == enrolled


def test_a_node_with_two_rows_is_recorded_once(client, campaign):
    event = round_event(1)
    event["nodes"].append({**event["nodes"][0], "metrics": {"num-examples": 10**6}})
    assert post(client, campaign, event).status_code == 200
    round_ = Round.objects.get(campaign=campaign, number=1)
    assert round_.participations.get().samples == 10 and "more than one row" in round_.errors[0]


# --- the server optimizer's state: stored and served with the round's files for a resume, never released --------

STATE = {**FILES, "server_optimizer.safetensors": b"\x00optimizer state bytes"}


def get_file(client, campaign, name, round_number: int = 1):
    return client.get(
        f"/api/v1/campaigns/{campaign.pk}/rounds/{round_number}/files/{name}",
        headers={"Authorization": f"Bearer {TOKEN}", "X-Flower-Run-Id": RUN_ID},
    )


def test_a_rounds_server_optimizer_state_is_stored_and_served_for_a_resume(client, campaign, settings):
    seal(client, campaign, files=STATE)
    round_ = Round.objects.get(campaign=campaign, number=1)
    assert round_.adapter_files == {name: sha(data) for name, data in STATE.items()}
    response = get_file(client, campaign, "server_optimizer.safetensors")
    assert response.status_code == 200 and b"".join(response.streaming_content) == STATE["server_optimizer.safetensors"]
    assert response["X-Content-SHA256"] == sha(STATE["server_optimizer.safetensors"])


def test_a_round_without_optimizer_state_answers_404_for_it(client, campaign):
    seal(client, campaign)
    assert get_file(client, campaign, "server_optimizer.safetensors").status_code == 404


def test_a_round_event_may_list_the_state_file_but_nothing_else_beside_the_adapter(client, campaign):
    extra = {**FILES, "optimizer.pt": b"x"}
    response = post(client, campaign, round_event(1, files=extra))
    assert response.status_code == 400 and "may map server_optimizer.safetensors" in response.json()["error"]
    missing = {"adapter_config.json": b"{}", "server_optimizer.safetensors": b"x"}
    assert post(client, campaign, round_event(1, files=missing)).status_code == 400


def test_a_round_is_a_resume_point_only_once_its_declared_state_file_is_stored(client, campaign):
    from campaigns.services.runs import last_merged_round

    seal(client, campaign, number=0)
    assert post(client, campaign, round_event(1, files=STATE)).status_code == 200
    for name in FILES:
        assert put_file(client, campaign, name, STATE[name]).status_code == 200
    assert last_merged_round(campaign) == 0  # the adapter is there, the state it declared is not yet
    data = STATE["server_optimizer.safetensors"]
    assert put_file(client, campaign, "server_optimizer.safetensors", data).status_code == 200
    assert last_merged_round(campaign) == 1


def test_behind_the_front_proxy_a_round_file_is_handed_to_the_proxy_with_its_sha256(client, campaign, settings):
    settings.DOWNLOADS_X_ACCEL = True
    seal(client, campaign, files=STATE)
    response = get_file(client, campaign, "server_optimizer.safetensors")
    assert response.status_code == 200 and response.content == b""
    assert response["X-Accel-Redirect"] == f"/campaigns/{campaign.pk}/round-1/server_optimizer.safetensors"
    assert (Path(settings.DATA_DIR) / response["X-Accel-Redirect"].lstrip("/")).read_bytes() == STATE[
        "server_optimizer.safetensors"
    ]
    assert response["X-Content-SHA256"] == sha(STATE["server_optimizer.safetensors"])
    # Refused requests never name a file.
    assert "X-Accel-Redirect" not in get_file(client, campaign, "server_optimizer.safetensors", round_number=7)


@pytest.mark.parametrize("body", [{"round": 1}, {"type": ["round"]}, {"type": {"round": 1}}, {"type": 7}, [1]])
def test_an_event_without_a_string_type_is_a_clear_400(client, campaign, body):
    response = post(client, campaign, body)
    assert response.status_code == 400 and "event must be an object with a 'type'" in response.json()["error"]
