"""A release folder: PEFT files, an HF model card, and provenance naming every round, node and file hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from community.models import Node
from releases.models import Release
from releases.services import release_publish

pytestmark = pytest.mark.django_db


def test_release_has_peft_files_card_and_provenance(finished_campaign):
    release = release_publish(campaign=finished_campaign)
    folder = Path(release.path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "model.sig", "provenance.json"
    ]  # fmt: skip
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny"

    card = (folder / "README.md").read_text()
    front = card.split("---")[1]
    for line in ("base_model: org/tiny", "base_model_relation: adapter", "library_name: peft", "license: apache-2.0"):
        assert line in front
    assert "3.0000 to 2.2000" in card

    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["base_model"]["files_sha256"] == {"config.json": "ab" * 32}
    assert [r["round"] for r in provenance["rounds"]] == [0, 1, 2]
    pseudonyms = set(Node.objects.values_list("pseudonym", flat=True))
    for r in provenance["rounds"][1:]:
        assert {n["node"] for n in r["nodes"]} == pseudonyms
        assert {n["data_fingerprint"] for n in r["nodes"]} == {"0" * 64, "1" * 64}
    names = {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    assert set(provenance["files_sha256"]) == names
    for name in names:
        assert provenance["files_sha256"][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    # The database pins all four files, provenance.json included.
    for f in release.files.all():
        assert f.sha256 == hashlib.sha256((folder / f.path).read_bytes()).hexdigest()
    assert provenance["code"]["flwr"] == "1.42.0"
    # No node's name or Flower id leaks into what is published.
    text = (folder / "provenance.json").read_text() + card
    assert '"n0"' not in text and "flwr_node_id" not in text


def test_publishing_twice_returns_the_same_release(finished_campaign):
    first = release_publish(campaign=finished_campaign)
    assert release_publish(campaign=finished_campaign).pk == first.pk


def test_a_release_is_signed_with_the_platform_key_and_verifies(release, settings):
    from federation.verify import verify_folder
    from releases.signing import public_key_fingerprint, public_key_path

    result = verify_folder(Path(release.path), public_key_path())
    assert result.key_fingerprint == release.key_fingerprint == public_key_fingerprint()
    assert release.signature_sha256 == hashlib.sha256((Path(release.path) / "model.sig").read_bytes()).hexdigest()
    # The key was made on first use, private, with its public half beside it.
    assert settings.SIGNING_KEY.stat().st_mode & 0o777 == 0o600
    assert public_key_path() == settings.SIGNING_KEY.with_suffix(".pub")


def test_files_are_stored_once_by_sha256_and_read_only(release, settings):
    from releases.blobs import blob_path

    for f in release.files.all():
        blob = blob_path(f.sha256)
        assert blob.is_file() and blob.stat().st_mode & 0o222 == 0
        assert (Path(release.path) / f.path).samefile(blob)  # the folder links to the blob
    assert blob_path(release.signature_sha256).is_file()


def test_a_published_release_cannot_be_changed_only_yanked(release, django_user_model):
    from releases.services import release_yank

    release.path = "/elsewhere"
    with pytest.raises(ValueError, match="immutable"):
        release.save()
    with pytest.raises(ValueError, match="immutable"):
        release.save(update_fields=["path"])
    staff = django_user_model.objects.create_user("curator", is_staff=True)
    yanked = release_yank(release=release, by=staff, reason="bad data in round 2")
    assert yanked.is_yanked and yanked.yanked_by == staff and yanked.yank_reason == "bad data in round 2"
    first = yanked.yanked_at
    assert release_yank(release=release, by=staff).yanked_at == first  # yanking twice keeps the first record
    assert Path(yanked.path).is_dir()  # hidden, not deleted


def test_model_card_says_what_it_is_for_who_contributed_how_it_was_aggregated_and_how_to_load_it(release):
    card = (Path(release.path) / "README.md").read_text()
    for section in ("## Intended use", "## Base model", "## Results", "## Contributors", "## Aggregation",
                    "## Limitations", "## How to use", "## Provenance"):  # fmt: skip
        assert section in card
    for pseudonym in Node.objects.values_list("pseudonym", flat=True):
        assert f"| {pseudonym} | 1, 2 |" in card
    assert f'PeftModel.from_pretrained(base, "{release.repo_id}")' in card
    assert "python -m federation verify" in card and "HF_ENDPOINT" in card


def test_a_round_file_changed_on_disk_since_its_upload_is_not_published(finished_campaign, settings):
    """What the platform signs is the adapter the round recorded, byte for byte."""
    folder = settings.DATA_DIR / "campaigns" / str(finished_campaign.pk) / "round-2"
    (folder / "adapter_model.safetensors").write_bytes(b"her own weights")
    with pytest.raises(ValidationError, match="adapter_model.safetensors on disk do not match"):
        release_publish(campaign=finished_campaign)
    assert not Release.objects.exists()
    assert not (settings.DATA_DIR / "releases" / ".staging" / str(finished_campaign.pk)).exists()


def test_a_campaign_whose_final_adapter_changed_fails_instead_of_publishing(finished_campaign, settings):
    from campaigns.models import Campaign
    from campaigns.services.runs import campaign_complete

    folder = settings.DATA_DIR / "campaigns" / str(finished_campaign.pk) / "round-2"
    config = folder / "adapter_config.json"
    config.write_bytes(config.read_bytes() + b" ")  # still valid JSON, a different file
    campaign_complete(campaign=finished_campaign)
    finished_campaign.refresh_from_db()
    assert finished_campaign.status == Campaign.Status.FAILED
    assert (
        "publishing refused" in finished_campaign.status_reason
        and "adapter_config.json" in finished_campaign.status_reason
    )
    assert not Release.objects.exists()


def test_a_release_never_includes_the_server_optimizer_state(finished_campaign, settings):
    last = finished_campaign.rounds.get(number=2)
    folder = settings.DATA_DIR / "campaigns" / str(finished_campaign.pk) / "round-2"
    (folder / "server_optimizer.safetensors").write_bytes(b"state")
    last.adapter_files = {**last.adapter_files, "server_optimizer.safetensors": hashlib.sha256(b"state").hexdigest()}
    last.save()
    release = release_publish(campaign=finished_campaign)
    assert "server_optimizer.safetensors" not in {p.name for p in Path(release.path).iterdir()}
    assert "server_optimizer.safetensors" not in {f.path for f in release.files.all()}
    provenance = json.loads((Path(release.path) / "provenance.json").read_text())
    assert all("server_optimizer.safetensors" not in r["merged_adapter_sha256"] for r in provenance["rounds"])
    assert provenance["campaign"]["server_optimizer"].startswith("server SGD with learning rate 1 and momentum 0.5")
