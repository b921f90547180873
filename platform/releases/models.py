"""Published adapters: an immutable folder of files, each pinned by sha256."""

from __future__ import annotations

from campaigns.models import Campaign
from django.db import models


class Release(models.Model):
    campaign = models.OneToOneField(Campaign, on_delete=models.PROTECT, related_name="release")
    repo_id = models.CharField(max_length=200, help_text="<org>/<name>")
    revision = models.CharField(max_length=40, help_text="Content hash of the release's files")
    path = models.CharField(max_length=500, help_text="Folder holding the released files")
    eval_loss_before = models.FloatField(null=True)
    eval_loss_after = models.FloatField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repo_id", "revision"], name="one_revision_per_repo")]

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision[:8]}"


class ReleaseFile(models.Model):
    release = models.ForeignKey(Release, on_delete=models.CASCADE, related_name="files")
    path = models.CharField(max_length=200)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)

    class Meta:
        ordering = ["path"]
        constraints = [models.UniqueConstraint(fields=["release", "path"], name="one_file_per_path")]
