"""Reads: which releases a user may see, a repo's revisions, and the files (entries) of a release."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db.models import QuerySet

from federation.artifacts import PROVENANCE_NAME, SIGNATURE_NAME
from releases.blobs import blob_path
from releases.models import Release


class RepoNotFound(Exception):
    pass


class RevisionNotFound(Exception):
    pass


# A revision is `main` or the full 40-hex content hash; anything else is not looked up at all (no query carries a
# client's odd bytes, e.g. a NUL that PostgreSQL refuses with an exception).
_REVISION = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Entry:
    """One downloadable file of a release; `file_id` is None for the signature (it is not a ReleaseFile)."""

    path: str
    size: int
    sha256: str
    file_id: int | None = None
    download_count: int = 0


def _may_see_yanked(user: Any) -> bool:
    return bool(getattr(user, "is_staff", False))


def release_list(*, user: Any = None) -> QuerySet[Release]:
    """Newest first; yanked releases only for staff."""
    releases = Release.objects.select_related("campaign", "campaign__base_model").order_by("-created_at", "-pk")
    return releases if _may_see_yanked(user) else releases.filter(yanked_at__isnull=True)


def release_revisions(*, repo_id: str, user: Any = None) -> QuerySet[Release]:
    return release_list(user=user).filter(repo_id=repo_id)


def release_get(*, repo_id: str, revision: str = "main", user: Any = None) -> Release:
    """`main` is the latest non-yanked release; anything else is an exact revision.

    Raises RepoNotFound when the user can see no revision of the repo, RevisionNotFound when this one is not there.
    """
    visible = release_revisions(repo_id=repo_id, user=user)
    if revision == "main":
        release = visible.filter(yanked_at__isnull=True).first()
    elif not _REVISION.fullmatch(revision):
        release = None
    else:
        release = visible.filter(revision=revision).first()
    if release is None:  # only now ask which error it is: a download costs one query less
        raise RevisionNotFound(f"{repo_id}@{revision}") if visible.exists() else RepoNotFound(repo_id)
    return release


def release_entries(release: Release) -> list[Entry]:
    entries = [Entry(f.path, f.size, f.sha256, f.pk, f.download_count) for f in release.files.all()]
    if release.signature_sha256:
        entries.append(
            Entry(SIGNATURE_NAME, release.signature_size, release.signature_sha256, None, release.signature_downloads)
        )
    return sorted(entries, key=lambda e: e.path)


def release_entry(release: Release, path: str) -> Entry | None:
    """Looked up among the release's rows: a client's path only ever selects, it never reaches the filesystem."""
    if path == SIGNATURE_NAME:
        return next((e for e in release_entries(release) if e.path == path), None)
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return None  # no stored path has one, and PostgreSQL refuses a NUL in a query: a 404, not a 500
    row = release.files.filter(path=path).first()  # one row, not every file: this runs on every download
    return None if row is None else Entry(row.path, row.size, row.sha256, row.pk, row.download_count)


def entry_file(release: Release, entry: Entry) -> Path:
    """The stored bytes of an entry: its blob, or (releases published before the blob store) the folder's file."""
    blob = blob_path(entry.sha256)
    return blob if blob.exists() else Path(release.path) / entry.path


def release_provenance(release: Release) -> dict[str, Any]:
    entry = release_entry(release, PROVENANCE_NAME)
    if entry is None:
        return {}
    with entry_file(release, entry).open() as fh:
        return json.load(fh)
