"""Published adapters: an immutable folder of files, each pinned (and stored) by sha256.

A release is never changed once published: only its yank state and download counters move.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from campaigns.models import Campaign


class Release(models.Model):
    # Fields that may change after publishing; everything else is frozen (see save()).
    MUTABLE_FIELDS = frozenset({"yanked_at", "yanked_by", "yank_reason", "download_count", "signature_downloads"})

    campaign = models.OneToOneField(Campaign, on_delete=models.PROTECT, related_name="release")
    repo_id = models.CharField(max_length=200, help_text="<org>/<name>")
    revision = models.CharField(max_length=40, help_text="Content hash of the release's files")
    path = models.CharField(max_length=500, help_text="Folder holding the released files")
    eval_loss_before = models.FloatField(null=True)
    eval_loss_after = models.FloatField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The Sigstore bundle (model.sig) signs the files below; it is not one of them (it is outside its own hash set).
    signature_sha256 = models.CharField(max_length=64, blank=True)
    signature_size = models.BigIntegerField(default=0)
    key_fingerprint = models.CharField(max_length=80, blank=True, help_text="SHA256 of the signing public key (DER)")
    yanked_at = models.DateTimeField(null=True, blank=True)
    yanked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    yank_reason = models.TextField(blank=True)
    download_count = models.PositiveBigIntegerField(default=0, help_text="Whole-release downloads (weights or zip)")
    signature_downloads = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repo_id", "revision"], name="one_revision_per_repo")]

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision[:8]}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        update_fields = kwargs.get("update_fields")
        if self.pk is not None and not kwargs.get("force_insert"):
            if update_fields is None or not set(update_fields) <= self.MUTABLE_FIELDS:
                raise ValueError("a published release is immutable: only its yank state and counters may change")
        super().save(*args, **kwargs)

    @property
    def is_yanked(self) -> bool:
        return self.yanked_at is not None

    @property
    def org(self) -> str:
        return self.repo_id.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.repo_id.split("/", 1)[1]


class ReleaseFile(models.Model):
    release = models.ForeignKey(Release, on_delete=models.CASCADE, related_name="files")
    path = models.CharField(max_length=200)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    download_count = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["path"]
        constraints = [models.UniqueConstraint(fields=["release", "path"], name="one_file_per_path")]
