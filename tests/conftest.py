"""Shared fixtures for the federation tests: one tiny checkpoint per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from federation import procs
from testbed.tiny import build_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_checkpoint: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint)


def write_jsonl(path: Path, texts: list[str]) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two nodes' local data (different topics) and a held-out file, from the real demo corpus builder."""
    from federation.corpus import build_demo_corpus

    root = tmp_path_factory.mktemp("corpus")
    build_demo_corpus(root, n_contributors=2, max_chunks_per_node=16, max_heldout=8)
    return root


@pytest.fixture
def tls_superlink(tmp_path, settings) -> Iterator[str]:
    """A real SuperLink with TLS and node authentication behind its proxy; yields the address nodes dial.

    Here rather than in tests/platform/ because the contributor-install test (tests/federation/) needs it too."""
    from stack.runner import Stack

    superlink, public = f"127.0.0.1:{procs.free_port()}", f"127.0.0.1:{procs.free_port()}"
    settings.SUPERLINK_ADDRESS, settings.SUPERLINK_PUBLIC_ADDRESS = superlink, public
    settings.SUPERLINK_TLS_DIR = tmp_path / "superlink-tls"
    settings.SUPERLINK_ROOT_CERT = str(tmp_path / "superlink-tls" / "ca.crt")
    settings.LINK_SECRET_FILE = tmp_path / "keys" / "link-secret"
    stack = Stack(tmp_path / "stack")
    try:
        stack.start_federation(superlink, public)
        yield public
    finally:
        stack.stop()
