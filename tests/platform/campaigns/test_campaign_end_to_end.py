"""A campaign through the whole platform: service launch → Celery → SuperLink → 2 SuperNodes → release."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from campaigns.models import Campaign
from campaigns.services.setup import campaign_output_dir

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
TRAIN = {"local-steps": 4, "seq-len": 64, "batch-size": 4, "lr": 0.01, "threads": 1}


def test_campaign_trains_records_rounds_and_publishes_a_loadable_release(live_platform):
    campaign = live_platform.run_campaign(
        "E2E",
        train_config=TRAIN | {"node-validation": "both"},
        num_rounds=2,
        min_nodes=2,
    )
    assert campaign.status == Campaign.Status.COMPLETED, campaign.status_reason

    rounds = list(campaign.rounds.order_by("number"))
    assert [r.number for r in rounds] == [0, 1, 2]
    assert rounds[0].participants == 0  # round 0 is the base model's evaluation
    # Every round's evaluation came in after it went on record, before the campaign completed.
    assert all(r.evaluated_at is not None and r.eval_loss is not None for r in rounds)
    elements = adapter_elements(campaign)
    for r in rounds[1:]:
        assert r.participants == 2 and r.failures == 0
        assert r.bytes_down == r.bytes_up  # same adapter shape both ways
        # Packed float32 (the default): 4 bytes an element plus one npy header and the layout, per node.
        assert 2 * 4 * elements < r.bytes_up < 2 * (4 * elements + PACKING_OVERHEAD)
        parts = list(r.participations.select_related("node"))
        assert sorted(p.node.name for p in parts) == ["node-1", "node-2"]
        assert all(p.samples > 0 and p.tokens > 0 and len(p.data_fingerprint) == 64 for p in parts)
        assert all(p.val_loss_before is not None and p.val_loss_after is not None for p in parts)  # "both"
    # Nodes hold different topics: their data fingerprints differ, and match what the corpus recorded.
    manifest = json.loads((live_platform.corpus / "manifest.json").read_text())
    fingerprints = {p.node.name: p.data_fingerprint for p in rounds[1].participations.select_related("node")}
    assert fingerprints == {name: node["fingerprint"] for name, node in manifest["nodes"].items()}

    # Each node's rounds ran in its warm worker (join turns it on by default), once each.
    for name in ("node-1", "node-2"):
        worker = json.loads((live_platform.stack.state_dir / "nodes" / name / "warm-worker.json").read_text())
        assert worker["jobs"]["run"] == 2 and worker["jobs"]["failed"] == 0, worker
        # ... and every message's task process was a fork of the node's task launcher, not a fresh Python.
        launcher = json.loads((live_platform.stack.state_dir / "nodes" / name / "task-launcher.json").read_text())
        assert launcher["tasks"]["launched"] >= 2 and launcher["tasks"]["fallback"] == 0, launcher

    # Where each round's time went (bench/overhead.py reads these): in order, and the nodes' parts fit their total.
    journal = campaign_output_dir(campaign) / "server" / "events.jsonl"
    events = [json.loads(line) for line in journal.read_text().splitlines()]
    started = next(e for e in events if e["type"] == "started")
    assert started["process_started"] <= started["time"]
    # Each round on record when merged, then its evaluation (which may lag behind the next rounds): both in order.
    assert [e["type"] for e in events][:: len(events) - 1] == ["started", "finished"] and len(events) == 8
    assert [e["round"] for e in events if e["type"] == "round"] == [0, 1, 2]
    assert [e["round"] for e in events if e["type"] == "evaluated"] == [0, 1, 2]
    timings = {e["round"]: e["timings"] for e in events if e["type"] == "round"}
    scored = {e["round"]: e["timings"] for e in events if e["type"] == "evaluated"}
    # Evaluation is off the critical path: round N+1's instructions went out before round N's evaluation ended
    # (the tiny model evaluates fast, so only the hand-off is certain to come first).
    for n in (1, 2):
        assert timings[n - 1]["evaluate_queued"] <= timings[n]["sent"]
    for event in (e for e in events if e["type"] == "round" and e["round"] > 0):
        t = event["timings"]
        assert t["sent"] <= t["replies"] <= t["aggregated"] <= t["evaluate_queued"] <= t["saved"] <= event["time"]
        assert event["time"] <= scored[event["round"]]["evaluate_started"] <= scored[event["round"]]["evaluated"]
        for node in event["nodes"]:
            m = node["metrics"]
            parts = m["startup-seconds"] + m["load-seconds"] + m["eval-seconds"] + m["train-seconds"]
            assert min(m["startup-seconds"], m["load-seconds"], m["eval-seconds"]) >= 0
            assert parts <= m["node-seconds"] <= t["replies"] - t["sent"] + 1.0  # 1 s: process start rounding

    release = campaign.release
    folder = Path(release.path)
    assert {f.path for f in release.files.all()} == {
        "README.md", "adapter_config.json", "adapter_model.safetensors", "provenance.json"
    }  # fmt: skip
    provenance = json.loads((folder / "provenance.json").read_text())
    assert [r["round"] for r in provenance["rounds"]] == [0, 1, 2]
    assert {n["node"] for n in provenance["rounds"][1]["nodes"]} == set(
        rounds[1].participations.values_list("node__pseudonym", flat=True)
    )

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_model = AutoModelForCausalLM.from_pretrained(live_platform.model)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        before = base_model(input_ids=ids).logits.clone()
        tuned = PeftModel.from_pretrained(base_model, str(folder))
        after = tuned(input_ids=ids).logits
    assert not torch.allclose(before, after, atol=1e-6), "the released adapter changes nothing"


PACKING_OVERHEAD = 16_384  # bytes: npy header, array key, layout (names of the tiny model's tensors, digest)


def adapter_elements(campaign: Campaign) -> int:
    """Elements in the campaign's adapter, from round 1's saved file."""
    from safetensors import safe_open

    path = campaign_output_dir(campaign) / "server" / "round-1" / "adapter_model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def test_a_float16_campaign_sends_half_the_bytes_and_merges_in_float32(live_platform):
    """transfer-dtype float16 both ways: a real round completes, the wire carries 2 bytes an element, and what the
    server merged, evaluated and released is float32."""
    campaign = live_platform.run_campaign(
        "Half",
        train_config={"local-steps": 2, "seq-len": 32, "threads": 1},
        transfer_dtype="float16",
        num_rounds=1,
        min_nodes=2,
    )
    assert campaign.status == Campaign.Status.COMPLETED, campaign.status_reason
    merged = campaign.rounds.get(number=1)
    assert merged.participants == 2 and merged.failures == 0
    elements = adapter_elements(campaign)
    assert 2 * 2 * elements < merged.bytes_up < 2 * (2 * elements + PACKING_OVERHEAD)
    assert merged.bytes_down == merged.bytes_up
    from safetensors.torch import load_file

    released = load_file(str(Path(campaign.release.path) / "adapter_model.safetensors"))
    assert {t.dtype for t in released.values()} == {torch.float32}
    assert any(t.abs().sum() > 0 for k, t in released.items() if "lora_B" in k)  # training moved B off zero


def test_release_files_download_over_http(live_platform, client):
    """Downloads come from the site, byte for byte, and only files of a release can be asked for."""
    import requests

    campaign = live_platform.run_campaign(
        "Download",
        train_config={"local-steps": 2, "seq-len": 32, "threads": 1},
        num_rounds=1,
        min_nodes=2,
    )
    assert campaign.status == Campaign.Status.COMPLETED, campaign.status_reason
    # By default nodes validate after training only: the loss before is not measured, and not recorded as 0.
    parts = list(campaign.rounds.get(number=1).participations.all())
    assert parts and all(p.val_loss_before is None and p.val_loss_after is not None for p in parts)
    release = campaign.release
    for f in release.files.all():
        url = f"{live_platform.site_url}/releases/{release.repo_id}/{release.revision}/{f.path}"
        response = requests.get(url, timeout=10)
        assert response.status_code == 200
        assert response.content == (Path(release.path) / f.path).read_bytes()
    traversal = f"{live_platform.site_url}/releases/{release.repo_id}/{release.revision}/..%2F..%2Fsecret_key"
    assert requests.get(traversal, timeout=10).status_code == 404


def test_a_dp_campaign_publishes_epsilon_on_its_card_and_provenance(live_platform):
    campaign = live_platform.run_campaign(
        "DP",
        train_config={"local-steps": 2, "seq-len": 32, "threads": 1},
        aggregation={"dp-noise-multiplier": 1.0, "dp-clipping-norm": 0.5, "dp-delta": 1e-5},
        num_rounds=2,
        min_nodes=2,
    )
    assert campaign.status == Campaign.Status.COMPLETED, campaign.status_reason

    epsilons = list(campaign.rounds.order_by("number").values_list("epsilon", flat=True))
    assert epsilons[0] is None and 0 < epsilons[1] < epsilons[2]  # composed over rounds
    folder = Path(campaign.release.path)
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["privacy"]["epsilon"] == pytest.approx(epsilons[2])
    assert provenance["privacy"]["delta"] == 1e-5
    assert f"ε = {epsilons[2]:.3f} at δ = 1e-05" in (folder / "README.md").read_text()
