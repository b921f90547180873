"""The contributor's commands: bad data stops with file:line errors and the node never starts."""

from __future__ import annotations

import subprocess
import sys

from federation import procs


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "federation", *args],
        capture_output=True, text=True, timeout=120, env=procs.flower_env(procs.REPO_ROOT / "var" / "unused"),
    )  # fmt: skip


def test_node_with_bad_data_exits_with_file_and_line_and_never_connects(tmp_path):
    bad = tmp_path / "data.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n{"instruction": "no output"}\n')
    # The SuperLink address is unreachable on purpose: the command must stop before trying it.
    result = run("node", "--superlink", "127.0.0.1:9", "--data", str(bad), "--home", str(tmp_path / "h"))
    assert result.returncode == 2
    assert f"{bad}:2: invalid JSON" in result.stderr
    assert f"{bad}:3: missing field 'output'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "starting SuperNode" not in result.stdout


def test_validate_prints_counts_and_fingerprint_only(tmp_path):
    good = tmp_path / "data.jsonl"
    good.write_text('{"text": "a private sentence"}\n{"instruction": "add", "output": "2"}\n')
    result = run("validate", str(good))
    assert result.returncode == 0, result.stderr
    assert "2 records (1 instruction, 1 text)" in result.stdout
    assert "fingerprint sha256 " in result.stdout
    assert "a private sentence" not in result.stdout


def test_validate_reports_empty_and_binary_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02")
    result = run("validate", str(tmp_path))
    assert result.returncode == 2
    assert "empty.jsonl" in result.stderr and "blob.txt" in result.stderr
