"""A release folder: PEFT files, an HF model card, and provenance naming every round, node and file hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from campaigns.models import BaseModel, Campaign, Participation, Round
from community.models import Node
from releases.services import release_publish

from federation.config import TrainConfig
from federation.task import lora_model

pytestmark = pytest.mark.django_db


@pytest.fixture
def finished_campaign(tmp_path, settings, tiny_checkpoint) -> Campaign:
    settings.DATA_DIR = tmp_path / "data"
    base = BaseModel.objects.create(
        name="tiny", hf_id="org/tiny", path=str(tiny_checkpoint), files={"config.json": "ab" * 32}, license="apache-2.0"
    )
    campaign = Campaign.objects.create(
        name="Docs refinement", base_model=base, data_task="python-docs", heldout_path="h", num_rounds=2,
        train_config=TrainConfig().to_run_config(), status=Campaign.Status.RUNNING, flwr_run_id="42",
    )  # fmt: skip
    nodes = [Node.objects.create(name=f"n{i}", flwr_node_id=str(i)) for i in range(2)]
    for number, loss in [(0, 3.0), (1, 2.5), (2, 2.2)]:
        round_ = Round.objects.create(
            campaign=campaign, number=number, eval_loss=loss, participants=0 if number == 0 else 2
        )
        if number:
            for i, node in enumerate(nodes):
                Participation.objects.create(
                    round=round_, node=node, samples=10 + i, tokens=100, data_fingerprint=f"{i}" * 64
                )
        folder = settings.DATA_DIR / "campaigns" / str(campaign.pk) / f"round-{number}"
        lora_model(str(tiny_checkpoint), TrainConfig(lora_r=2)).save_pretrained(folder)
        round_.adapter_files = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest()
                                for n in ("adapter_config.json", "adapter_model.safetensors")}  # fmt: skip
        round_.save()
    return campaign


def test_release_has_peft_files_card_and_provenance(finished_campaign):
    release = release_publish(campaign=finished_campaign)
    folder = Path(release.path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "provenance.json"
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
