"""A real release built without running Flower: a finished campaign whose rounds hold real PEFT adapters."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from campaigns.models import BaseCheckpoint, Campaign, Participation, Round
from community.models import Node
from federation.config import TrainConfig
from federation.task import lora_model
from releases.models import Release
from releases.services import release_publish


@pytest.fixture(autouse=True)
def signing_key_in_tmp(tmp_path, settings) -> Path:
    """Never touch the real var/keys: each test gets its own platform key (made on first use)."""
    settings.SIGNING_KEY = tmp_path / "keys" / "signing-key.pem"
    return settings.SIGNING_KEY


@pytest.fixture
def finished_campaign(tmp_path, settings, tiny_checkpoint) -> Campaign:
    settings.DATA_DIR = tmp_path / "data"
    base = BaseCheckpoint.objects.create(
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
        model = lora_model(str(tiny_checkpoint), TrainConfig(lora_r=2))
        # A fresh LoRA has B = 0 and changes nothing; a trained-looking one shows whether it was really loaded.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
        model.save_pretrained(folder)
        round_.adapter_files = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest()
                                for n in ("adapter_config.json", "adapter_model.safetensors")}  # fmt: skip
        round_.save()
    return campaign


@pytest.fixture
def release(finished_campaign) -> Release:
    return release_publish(campaign=finished_campaign)
