"""What the ServerApp writes, the site stores and a release publishes: file names, round folders and hashing.

One home for the names both sides spell (the ServerApp saves `round-N/`, the site receives the same files into its
own `round-N/`, releases copy them, benchmarks read them): a name changed here changes everywhere, instead of a
silent mismatch between two literals. Nothing here imports torch or Django.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# The merged adapter of a round, as PEFT's save_pretrained writes it (and a release publishes it).
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
# The server optimizer's state after a round (federation.server_optimizer: momentum, Adam's/Yogi's moments), kept
# beside that round's adapter so a resumed campaign continues exactly; written only when the optimizer has state.
# The site stores and serves it with the round's files; releases never publish it.
SERVER_STATE = "server_optimizer.safetensors"
ROUND_FILES = (*ADAPTER_FILES, SERVER_STATE)  # every file a round may carry (ADAPTER_FILES always)
# A release folder's Sigstore bundle (OpenSSF model-signing) and its provenance record.
SIGNATURE_NAME = "model.sig"
PROVENANCE_NAME = "provenance.json"
# The header that carries a file's sha256 on uploads to the site and downloads from it.
CONTENT_SHA256_HEADER = "X-Content-SHA256"

_BLOCK = 1 << 20


def round_folder(root: Path | str, number: int) -> Path:
    """Where round `number`'s merged adapter lives under a campaign's output folder (ServerApp and site alike)."""
    return Path(root) / f"round-{int(number)}"


def resume_folder(root: Path | str, number: int) -> Path:
    """Where a resumed ServerApp puts the merged adapter of round `number` it fetched from the site."""
    return Path(root) / f"resume-from-round-{int(number)}"


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, streamed so a 500 MB checkpoint never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
