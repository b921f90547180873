"""`verify URL` binds what it checked to the repo id and revision asked for: a hostile mirror serving
another repo's release, or a release under a made-up revision, fails even though the signature is valid."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from federation.__main__ import main
from federation.verify import VerificationError, release_revision, verify, verify_folder

REPO = "bayanihan/docs-1"


def _keys(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / "platform.pem", folder / "platform.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def _release(folder: Path, private_key: Path, repo_id: str | None, weights: bytes = b"w" * 999) -> Path:
    """A platform-signed release folder whose provenance names `repo_id` (None: an older one that names none)."""
    import model_signing

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 2}\n')
    (folder / "adapter_model.safetensors").write_bytes(weights)
    (folder / "README.md").write_text("# card\n")
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
    provenance = {
        "base_model": {"id": "org/tiny", "files_sha256": {"model.safetensors": "ab" * 32}},
        "rounds": [],
        "files_sha256": files,
    }
    if repo_id is not None:
        provenance["repo_id"] = repo_id
    (folder / "provenance.json").write_text(json.dumps(provenance))
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=["model.sig"])
    model_signing.signing.Config().use_elliptic_key_signer(private_key=private_key).set_hashing_config(hashing).sign(
        folder, folder / "model.sig"
    )
    return folder


def _revision(folder: Path) -> str:
    return release_revision(
        {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.name != "model.sig"}
    )


class Mirror:
    """A site speaking the Hub read API, serving `folder` for every repo and claiming `sha` as its revision."""

    def __init__(self, folder: Path, public_key: Path, sha: str):
        self.folder, self.public_key, self.sha = folder, public_key, sha
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = unquote(self.path)
                if path == "/releases/signing-key.pub":
                    return self._send(mirror.public_key.read_bytes())
                if path.startswith("/api/models/"):
                    names = sorted(p.name for p in mirror.folder.iterdir())
                    info = {"sha": mirror.sha, "siblings": [{"rfilename": n} for n in names]}
                    return self._send(json.dumps(info).encode())
                if "/resolve/" in path:
                    return self._send((mirror.folder / path.rsplit("/", 1)[1]).read_bytes())
                self.send_response(404)
                self.end_headers()

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def serve() -> Iterator:
    servers = []

    def start(folder: Path, public_key: Path, sha: str) -> Mirror:
        mirror = Mirror(folder, public_key, sha)
        threading.Thread(target=mirror.server.serve_forever, daemon=True).start()
        servers.append(mirror.server)
        return mirror

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    return _keys(tmp_path)


def _problems(url: str) -> str:
    with pytest.raises(VerificationError) as err:
        verify(url)
    return "\n".join(err.value.problems)


def test_an_honest_site_verifies_and_the_revision_is_recomputed(tmp_path, keys, serve):
    folder = _release(tmp_path / "r", keys[0], REPO)
    mirror = serve(folder, keys[1], _revision(folder))
    for url in (f"{mirror.url}/releases/{REPO}/", f"{mirror.url}/releases/{REPO}/{_revision(folder)}/"):
        result = verify(url)
        assert (result.repo_id, result.revision) == (REPO, _revision(folder))


def test_another_repos_signed_release_served_under_this_name_fails(tmp_path, keys, serve):
    other = _release(tmp_path / "other", keys[0], "bayanihan/secret-campaign-7")  # e.g. a yanked one
    mirror = serve(other, keys[1], _revision(other))
    assert f"this is a release of bayanihan/secret-campaign-7, not of {REPO}" in _problems(
        f"{mirror.url}/releases/{REPO}/"
    )


def test_a_made_up_revision_fails(tmp_path, keys, serve):
    folder = _release(tmp_path / "r", keys[0], REPO)
    made_up = "f" * 40
    mirror = serve(folder, keys[1], made_up)
    problems = _problems(f"{mirror.url}/{REPO}")
    assert f"the files make revision {_revision(folder)}, not {made_up}" in problems


def test_a_site_answering_another_revision_than_the_url_asked_fails(tmp_path, keys, serve):
    folder = _release(tmp_path / "r", keys[0], REPO)
    mirror = serve(folder, keys[1], _revision(folder))
    asked = "e" * 40
    assert f"asked for revision {asked}, the site answered {_revision(folder)}" in _problems(
        f"{mirror.url}/releases/{REPO}/{asked}/"
    )


def test_a_release_whose_provenance_names_no_repo_cannot_be_bound_to_one(tmp_path, keys, serve):
    folder = _release(tmp_path / "r", keys[0], None)
    mirror = serve(folder, keys[1], _revision(folder))
    assert "does not name its repository" in _problems(f"{mirror.url}/releases/{REPO}/")


def test_a_local_folder_can_be_bound_too(tmp_path, keys, capsys):
    folder = _release(tmp_path / "r", keys[0], REPO)
    assert verify_folder(folder, keys[1]).revision == _revision(folder)
    ok = ["verify", str(folder), "--key", str(keys[1]), "--repo", REPO, "--revision", _revision(folder)]
    assert main(ok) == 0 and f"{REPO}@{_revision(folder)}" in capsys.readouterr().out
    assert main(["verify", str(folder), "--key", str(keys[1]), "--repo", "bayanihan/other-2"]) == 1
    assert "not of bayanihan/other-2" in capsys.readouterr().err
    assert main(["verify", str(folder), "--key", str(keys[1]), "--revision", "0" * 40]) == 1
    assert "not " + "0" * 40 in capsys.readouterr().err
