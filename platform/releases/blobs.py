"""Content-addressed storage: every released file lives once under blobs/sha256/<ab>/<sha256>, read-only.

Release folders hold hard links to these blobs (a copy where links are impossible), and downloads are
served from the blob named by a database row's sha256 — never from a path a client sent.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from django.conf import settings

from federation.artifacts import sha256_file

_SHA256 = re.compile(r"[0-9a-f]{64}")


def blob_root() -> Path:
    return Path(settings.DATA_DIR) / "releases" / "blobs" / "sha256"


def blob_path(sha256: str) -> Path:
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a sha256: {sha256!r}")
    return blob_root() / sha256[:2] / sha256


def blob_store(path: Path) -> str:
    """Move `path` into the store (if its content is not there yet) and leave a link to the blob in its place."""
    sha256 = sha256_file(path)
    blob = blob_path(sha256)
    if not blob.exists():
        blob.parent.mkdir(parents=True, exist_ok=True)
        partial = blob.with_name(f".{sha256}.partial")
        shutil.copyfile(path, partial)
        partial.chmod(0o444)  # a blob is named by its content: nobody writes to it again
        partial.replace(blob)
    path.unlink()
    try:
        os.link(blob, path)
    except OSError:  # another filesystem, or links not allowed: a copy is as good
        shutil.copyfile(blob, path)
    return sha256
