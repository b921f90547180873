"""`python -m federation verify`: a signed release passes; every kind of tampering fails with a clear message."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from federation.__main__ import main
from federation.verify import SourceError, VerificationError, parse_release_url, verify, verify_folder


def _key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def _sign(folder: Path, private_key: Path) -> None:
    import model_signing

    hashing = model_signing.hashing.Config().set_ignored_paths(paths=["model.sig"])
    model_signing.signing.Config().use_elliptic_key_signer(private_key=private_key).set_hashing_config(hashing).sign(
        folder, folder / "model.sig"
    )


def _write_release(folder: Path, private_key: Path, base_files: dict[str, str] | None = None) -> Path:
    """The same layout the platform publishes: adapter files, card, provenance naming every hash, model.sig."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 2}\n')
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    (folder / "README.md").write_text("---\nlibrary_name: peft\n---\n# test\n")
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
    pinned = {"model.safetensors": "ab" * 32} if base_files is None else base_files
    provenance = {
        "base_model": {"id": "org/tiny", "files_sha256": pinned},
        "rounds": [{"round": 0, "nodes": []}, {"round": 1, "nodes": [{"node": "node-1", "error": None}]}],
        "files_sha256": files,
    }
    (folder / "provenance.json").write_text(json.dumps(provenance))
    _sign(folder, private_key)
    return folder


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    return _key_pair(tmp_path, "platform")


@pytest.fixture
def release(tmp_path, keys) -> Path:
    return _write_release(tmp_path / "release", keys[0])


def _problems(folder: Path, public_key: Path) -> str:
    with pytest.raises(VerificationError) as err:
        verify_folder(folder, public_key)
    return "\n".join(err.value.problems)


def test_a_signed_release_verifies_and_reports_what_it_checked(release, keys):
    result = verify_folder(release, keys[1])
    assert set(result.files) == {"README.md", "adapter_config.json", "adapter_model.safetensors", "provenance.json"}
    assert result.base_model == "org/tiny" and result.base_model_files == 1
    assert result.key_fingerprint.startswith("SHA256:") and result.nodes == ["node-1"]


def test_a_flipped_byte_fails(release, keys):
    weights = release / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    assert "adapter_model.safetensors: sha256" in _problems(release, keys[1])


def test_an_added_file_fails(release, keys):
    (release / "extra.bin").write_bytes(b"payload")
    assert "extra.bin: added, not part of the release" in _problems(release, keys[1])


def test_a_removed_file_fails(release, keys):
    (release / "README.md").unlink()
    assert "README.md: missing from the folder" in _problems(release, keys[1])


def test_a_wrong_key_fails(release, tmp_path):
    _, other_public = _key_pair(tmp_path, "someone-else")
    assert "not made with this public key" in _problems(release, other_public)


def test_a_file_and_its_provenance_hash_changed_together_fail_the_signature(release, keys):
    """Whoever edits a file and provenance.json to match still cannot re-sign with the platform key."""
    (release / "README.md").write_text("# a different card\n")
    provenance = json.loads((release / "provenance.json").read_text())
    provenance["files_sha256"]["README.md"] = hashlib.sha256(b"# a different card\n").hexdigest()
    (release / "provenance.json").write_text(json.dumps(provenance))
    problems = _problems(release, keys[1])
    assert "signature check failed" in problems and "README.md changed after signing" in problems


def test_re_signing_with_another_key_fails(release, keys, tmp_path):
    other_private, _ = _key_pair(tmp_path, "attacker")
    _sign(release, other_private)
    assert "not made with this public key" in _problems(release, keys[1])


def test_provenance_must_pin_the_base_model_files(tmp_path, keys):
    folder = _write_release(tmp_path / "nobase", keys[0], base_files={})
    assert "does not list the base model's file hashes" in _problems(folder, keys[1])


def test_a_folder_without_a_signature_fails(release, keys):
    (release / "model.sig").unlink()
    assert "model.sig is missing" in _problems(release, keys[1])


def test_a_symlinked_snapshot_like_huggingface_hub_makes_verifies(release, keys, tmp_path):
    """huggingface_hub's cache links snapshot files to its blob store; local_dir adds .cache/huggingface."""
    snapshot, blobs = tmp_path / "snapshot", tmp_path / "blobs"
    snapshot.mkdir()
    blobs.mkdir()
    for path in release.iterdir():
        shutil.copyfile(path, blobs / path.name)
        (snapshot / path.name).symlink_to(blobs / path.name)
    (snapshot / ".cache" / "huggingface").mkdir(parents=True)
    (snapshot / ".cache" / "huggingface" / "x.metadata").write_text("bookkeeping")
    assert verify_folder(snapshot, keys[1]).base_model == "org/tiny"


def test_cli_exits_zero_on_a_good_release_and_one_on_tampering(release, keys, capsys):
    assert main(["verify", str(release), "--key", str(keys[1])]) == 0
    assert "OK" in capsys.readouterr().out
    (release / "adapter_config.json").write_text('{"r": 64}\n')
    assert main(["verify", str(release), "--key", str(keys[1])]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "adapter_config.json: sha256" in err and "Traceback" not in err


def test_cli_says_what_is_wrong_with_bad_input_without_a_traceback(tmp_path, keys, capsys):
    assert main(["verify", str(tmp_path / "nowhere"), "--key", str(keys[1])]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["verify", f"http://127.0.0.1:{port}/releases/org/name/"]) == 2
    assert "cannot reach" in capsys.readouterr().err
    assert main(["verify", str(tmp_path), "--key", str(tmp_path / "missing.pub")]) == 2
    assert "cannot read the public key" in capsys.readouterr().err
    (tmp_path / "not-a-key.pub").write_text("hello")
    with pytest.raises(SourceError, match="not a PEM public key"):
        verify(str(tmp_path), str(tmp_path / "not-a-key.pub"))


def test_a_local_folder_needs_the_key_named():
    with pytest.raises(SourceError, match="--key"):
        verify(".")


@pytest.mark.parametrize(
    ("url", "repo_id", "revision"),
    [
        ("http://site:8000/releases/bayanihan/docs-1/", "bayanihan/docs-1", "main"),
        ("http://site:8000/releases/bayanihan/docs-1/" + "a" * 40 + "/", "bayanihan/docs-1", "a" * 40),
        ("https://site/bayanihan/docs-1", "bayanihan/docs-1", "main"),
        ("https://site/bayanihan/docs-1/tree/main", "bayanihan/docs-1", "main"),
    ],
)
def test_release_urls_name_site_repo_and_revision(url, repo_id, revision):
    remote = parse_release_url(url)
    assert (remote.repo_id, remote.revision) == (repo_id, revision)
    assert remote.site in {"http://site:8000", "https://site"}
