"""Publishing: turn a completed campaign's last merged adapter into an immutable release folder."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from campaigns.models import Campaign
from campaigns.services import campaign_output_dir
from django.conf import settings
from django.db import transaction
from django.utils.text import slugify

from federation.basemodel import sha256_file
from releases.model_card import render_model_card
from releases.models import Release, ReleaseFile
from releases.provenance import campaign_provenance

ORG = "bayanihan"


def release_publish(*, campaign: Campaign) -> Release:
    """Idempotent: a campaign has at most one release; publishing twice returns the first."""
    existing = Release.objects.filter(campaign=campaign).first()
    if existing is not None:
        return existing
    source = campaign_output_dir(campaign) / f"round-{campaign.num_rounds}"
    repo_id = f"{ORG}/{slugify(campaign.name) or 'campaign'}-{campaign.pk}"
    staging = Path(settings.DATA_DIR) / "releases" / ".staging" / str(campaign.pk)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    shutil.copyfile(source / "adapter_model.safetensors", staging / "adapter_model.safetensors")
    adapter_config = json.loads((source / "adapter_config.json").read_text())
    # Point at the upstream id, not a path on our server, so the folder loads anywhere.
    adapter_config["base_model_name_or_path"] = campaign.base_model.hf_id
    (staging / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")

    files = {name: sha256_file(staging / name) for name in ("adapter_config.json", "adapter_model.safetensors")}
    draft = campaign_provenance(campaign, files)
    (staging / "README.md").write_text(render_model_card(campaign, repo_id, draft))
    files["README.md"] = sha256_file(staging / "README.md")
    provenance = campaign_provenance(campaign, dict(sorted(files.items())))
    (staging / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    files["provenance.json"] = sha256_file(staging / "provenance.json")

    manifest = "".join(f"{name}\0{sha}\n" for name, sha in sorted(files.items()))
    revision = hashlib.sha256(manifest.encode()).hexdigest()[:40]
    final = Path(settings.DATA_DIR) / "releases" / repo_id / revision
    if final.exists():
        shutil.rmtree(staging)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging.replace(final)

    rounds = provenance["rounds"]
    with transaction.atomic():
        release = Release.objects.create(
            campaign=campaign,
            repo_id=repo_id,
            revision=revision,
            path=str(final),
            eval_loss_before=rounds[0]["eval_loss"],
            eval_loss_after=rounds[-1]["eval_loss"],
        )
        ReleaseFile.objects.bulk_create(
            ReleaseFile(release=release, path=name, size=(final / name).stat().st_size, sha256=sha)
            for name, sha in sorted(files.items())
        )
    return release
