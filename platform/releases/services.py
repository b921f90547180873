"""Publishing: turn a completed campaign's last merged adapter into an immutable release folder."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.text import slugify

from campaigns.models import Campaign
from campaigns.services.setup import campaign_output_dir
from federation.artifacts import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    ADAPTER_WEIGHTS,
    PROVENANCE_NAME,
    SIGNATURE_NAME,
    round_folder,
    sha256_file,
)
from federation.verify import release_revision
from releases.blobs import blob_store
from releases.model_card import render_model_card
from releases.models import Release, ReleaseFile
from releases.provenance import campaign_provenance
from releases.signing import public_key_fingerprint, sign_folder

ORG = "bayanihan"


def release_publish(*, campaign: Campaign) -> Release:
    """Idempotent: a campaign has at most one release; publishing twice returns the first."""
    existing = Release.objects.filter(campaign=campaign).first()
    if existing is not None:
        return existing
    source = round_folder(campaign_output_dir(campaign), campaign.num_rounds)
    repo_id = f"{ORG}/{slugify(campaign.name) or 'campaign'}-{campaign.pk}"
    staging = Path(settings.DATA_DIR) / "releases" / ".staging" / str(campaign.pk)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    # What is signed must be what the round recorded: the files are hashed as read for the release (the copy, the
    # bytes parsed), so a file changed on disk since its upload is caught here, not published.
    shutil.copyfile(source / ADAPTER_WEIGHTS, staging / ADAPTER_WEIGHTS)
    config_bytes = (source / ADAPTER_CONFIG).read_bytes()
    read = {
        ADAPTER_CONFIG: hashlib.sha256(config_bytes).hexdigest(),
        ADAPTER_WEIGHTS: sha256_file(staging / ADAPTER_WEIGHTS),
    }
    last = campaign.rounds.filter(number=campaign.num_rounds).first()
    recorded = last.adapter_files if last is not None else {}
    changed = [name for name, sha in read.items() if recorded.get(name) != sha]
    if changed:
        shutil.rmtree(staging)
        raise ValidationError(
            f"round {campaign.num_rounds}'s {' and '.join(changed)} on disk do not match the sha256 on record; "
            "refusing to publish"
        )
    adapter_config = json.loads(config_bytes)
    # Point at the upstream id, not a path on our server, so the folder loads anywhere.
    adapter_config["base_model_name_or_path"] = campaign.base_model.hf_id
    (staging / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")

    files = {name: sha256_file(staging / name) for name in ADAPTER_FILES}
    draft = campaign_provenance(campaign, files, repo_id=repo_id)
    (staging / "README.md").write_text(render_model_card(campaign, repo_id, draft))
    files["README.md"] = sha256_file(staging / "README.md")
    provenance = campaign_provenance(campaign, dict(sorted(files.items())), repo_id=repo_id)
    (staging / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2) + "\n")
    files[PROVENANCE_NAME] = sha256_file(staging / PROVENANCE_NAME)

    revision = release_revision(files)
    final = Path(settings.DATA_DIR) / "releases" / repo_id / revision
    if final.exists():  # a crash after the move last time: that folder (and its signature) is the release
        shutil.rmtree(staging)
    else:
        # Signed before it becomes visible; model.sig is outside its own hash set, so the revision ignores it.
        sign_folder(staging)
        for name in [*files, SIGNATURE_NAME]:
            blob_store(staging / name)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging.replace(final)
    signature = final / SIGNATURE_NAME

    rounds = provenance["rounds"]
    with transaction.atomic():
        release = Release.objects.create(
            campaign=campaign,
            repo_id=repo_id,
            revision=revision,
            path=str(final),
            eval_loss_before=rounds[0]["eval_loss"],
            eval_loss_after=rounds[-1]["eval_loss"],
            signature_sha256=sha256_file(signature),
            signature_size=signature.stat().st_size,
            key_fingerprint=public_key_fingerprint(),
        )
        ReleaseFile.objects.bulk_create(
            ReleaseFile(release=release, path=name, size=(final / name).stat().st_size, sha256=sha)
            for name, sha in sorted(files.items())
        )
    return release


def release_yank(*, release: Release, by: Any = None, reason: str = "") -> Release:
    """Hide a release (kept on disk and in the database, never changed); yanking twice keeps the first record."""
    with transaction.atomic():
        release = Release.objects.select_for_update().get(pk=release.pk)
        if release.yanked_at is None:
            release.yanked_at = timezone.now()
            release.yanked_by = by if getattr(by, "pk", None) else None
            release.yank_reason = reason
            release.save(update_fields=["yanked_at", "yanked_by", "yank_reason"])
    return release


def release_count_download(*, release: Release, path: str | None) -> None:
    """Count one download of a file (`path`) or of the whole release as a zip (`path=None`)."""
    # Every client fetches the weights exactly once per download, so they (or the zip) count the release's downloads.
    # One transaction: one commit per download, not one per counter.
    with transaction.atomic():
        if path is None or path == ADAPTER_WEIGHTS:
            Release.objects.filter(pk=release.pk).update(download_count=F("download_count") + 1)
        if path == SIGNATURE_NAME:
            Release.objects.filter(pk=release.pk).update(signature_downloads=F("signature_downloads") + 1)
        elif path is not None:
            ReleaseFile.objects.filter(release=release, path=path).update(download_count=F("download_count") + 1)


def campaign_publish(*, campaign: Campaign, by: Any = None) -> Release:
    """Staff publish the release of a completed campaign that has none yet (auto_publish off)."""
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if campaign.status != Campaign.Status.COMPLETED:
            raise ValidationError(f"campaign is {campaign.status}; only a completed one can be published")
        if Release.objects.filter(campaign=campaign).exists():
            raise ValidationError("this campaign's release is already published")
        return release_publish(campaign=campaign)


def publish_on_completion(sender: object, *, campaign: Campaign, **_: object) -> None:
    """campaigns.signals.campaign_completing receiver: an auto-publish campaign is published as it completes (its
    ValidationError fails the campaign instead); otherwise staff publish it later (campaign_publish)."""
    if campaign.auto_publish:
        release_publish(campaign=campaign)
