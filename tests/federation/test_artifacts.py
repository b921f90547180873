"""The names and hashing every side shares (federation.artifacts): one spelling, and the hash streams."""

from __future__ import annotations

import builtins
import hashlib
import re
from pathlib import Path

import pytest

from federation import artifacts
from federation.artifacts import ADAPTER_FILES, round_folder, sha256_file

REPO = Path(__file__).resolve().parents[2]


def test_sha256_file_reads_a_large_file_in_bounded_blocks(tmp_path, monkeypatch):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 9000  # 2.3 MB: three reads of at most 1 MiB
    path.write_bytes(data)
    reads: list[int] = []
    real_open = builtins.open

    class Counting:
        def __init__(self, fh):
            self.fh = fh

        def read(self, size=-1):
            reads.append(size)
            return self.fh.read(size)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(artifacts, "open", lambda p, mode="r": Counting(real_open(p, mode)), raising=False)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert len(reads) >= 3 and all(0 < size <= 1 << 20 for size in reads)  # never the whole file at once


def test_round_folders_are_numbered_and_refuse_what_is_not_a_number(tmp_path):
    assert round_folder(tmp_path, 3) == tmp_path / "round-3"
    assert round_folder(str(tmp_path), 0).name == "round-0"
    with pytest.raises(ValueError):
        round_folder(tmp_path, "1/../../etc")  # type: ignore[arg-type]


def test_no_other_module_spells_an_artifact_name():
    """A literal elsewhere would drift from the shared name silently (the site stores `round-1`, the ServerApp
    writes `round_1`): every producer and consumer goes through federation.artifacts."""
    names = [*ADAPTER_FILES, artifacts.SIGNATURE_NAME, artifacts.PROVENANCE_NAME, artifacts.CONTENT_SHA256_HEADER]
    quoted = "|".join(map(re.escape, names))
    literal = re.compile(rf"""["'](?:{quoted})["']|f["'][^"']*round-\{{""")
    offenders = []
    for folder in ("federation", "platform", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.name == "artifacts.py" or "migrations" in path.parts:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if literal.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
