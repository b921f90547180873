from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from federation.basemodel import MANIFEST_NAME, describe_checkpoint


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


def test_prepare_from_a_local_gguf_dequantizes_it_without_a_download(tiny_checkpoint, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from federation.basemodel import prepare_smollm2
    from testbed.tiny import write_tiny_gguf

    gguf_file = write_tiny_gguf(tiny_checkpoint, tmp_path / "gguf" / "tiny.gguf")
    cache = tmp_path / "cache"  # stays empty: no wheel is fetched
    manifest = prepare_smollm2(tmp_path / "base", cache, progress=lambda _: None, gguf_file=gguf_file, model_id="t/t")
    assert manifest["id"] == "t/t" and "tiny.gguf" in manifest["source"] and not cache.exists()
    assert describe_checkpoint(tmp_path / "base")["files"] == manifest["files"]
    ids = torch.tensor([[5, 17, 42, 300]])
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    assert torch.allclose(base(ids).logits, ref(ids).logits, atol=1e-5)  # the GGUF round trip loses nothing


def test_prepare_names_a_missing_gguf(tmp_path):
    from federation.basemodel import prepare_smollm2

    with pytest.raises(ValueError, match="nope.gguf: no such GGUF file"):
        prepare_smollm2(tmp_path / "base", tmp_path / "cache", gguf_file=tmp_path / "nope.gguf")
