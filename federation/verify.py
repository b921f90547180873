"""Check a published release: its Sigstore signature against the platform key, every file's sha256 against
provenance.json, and that provenance pins the base model's files. Plain Python, no Django.

A release is a folder (or a site URL it is fetched from) holding the adapter files, README.md, provenance.json
and model.sig, a Sigstore bundle made by OpenSSF model-signing with the platform's EC key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from federation.artifacts import PROVENANCE_NAME, SIGNATURE_NAME, sha256_file

KEY_URL_PATH = "/releases/signing-key.pub"
# huggingface_hub keeps its bookkeeping for `local_dir` downloads here; it is not part of the release.
HF_LOCAL_DIR_CACHE = ".cache/huggingface"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class VerificationError(Exception):
    """The release is not what the platform signed; `problems` says each way it differs."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


class SourceError(Exception):
    """The thing to check could not be read at all (missing path, unreachable URL, bad key file)."""


@dataclass
class Verified:
    folder: Path
    key_fingerprint: str
    files: dict[str, str]  # path -> sha256, model.sig excluded
    base_model: str
    base_model_files: int
    rounds: int
    nodes: list[str] = field(default_factory=list)
    repo_id: str = ""
    revision: str = ""


def release_revision(files: dict[str, str]) -> str:
    """A release's revision: the first 40 hex of the sha256 of its file list (`name NUL sha256 LF`, sorted by name).

    The platform names each release this way when it publishes (releases/services.py calls this function), so anyone
    can recompute it from the files the signature covers: a revision is bound to its content, not to what a server
    says it is."""
    manifest = "".join(f"{name}\0{sha}\n" for name, sha in sorted(files.items()))
    return hashlib.sha256(manifest.encode()).hexdigest()[:40]


def key_fingerprint(public_pem: bytes) -> str:
    """SHA256 of the DER SubjectPublicKeyInfo, the form the site shows next to its key."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(public_pem)
    except ValueError as exc:
        raise SourceError(f"not a PEM public key ({exc})") from exc
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def _release_files(folder: Path) -> set[str]:
    """Every file under the folder (relative posix paths), but the signature and huggingface_hub's own cache."""
    found = set()
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).as_posix()
        if path.is_dir() or rel == SIGNATURE_NAME or rel.startswith(HF_LOCAL_DIR_CACHE + "/"):
            continue
        found.add(rel)
    return found


def _load_provenance(folder: Path) -> dict[str, Any]:
    try:
        provenance = json.loads((folder / PROVENANCE_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerificationError([f"{PROVENANCE_NAME} is missing or not JSON ({exc})"]) from exc
    if not isinstance(provenance, dict) or not isinstance(provenance.get("files_sha256"), dict):
        raise VerificationError([f"{PROVENANCE_NAME} has no files_sha256 table"])
    return provenance


def _check_base_model(provenance: dict[str, Any]) -> list[str]:
    base = provenance.get("base_model")
    if not isinstance(base, dict) or not base.get("id"):
        return [f"{PROVENANCE_NAME} does not name the base model"]
    files = base.get("files_sha256")
    if not isinstance(files, dict) or not files:
        return [f"{PROVENANCE_NAME} does not list the base model's file hashes"]
    bad = sorted(name for name, sha in files.items() if not (isinstance(sha, str) and _SHA256.fullmatch(sha)))
    return [f"{PROVENANCE_NAME}: base model file {name} has no valid sha256" for name in bad]


def _check_files(folder: Path, provenance: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    expected = {str(k): str(v) for k, v in provenance["files_sha256"].items()}
    present = _release_files(folder)
    wanted = set(expected) | {PROVENANCE_NAME}
    problems = [f"{name}: added, not part of the release" for name in sorted(present - wanted)]
    problems += [f"{name}: missing from the folder" for name in sorted(wanted - present)]
    hashes = {}
    for name in sorted(present & wanted):
        hashes[name] = sha256_file(folder / name)
        if name in expected and hashes[name] != expected[name]:
            problems.append(f"{name}: sha256 {hashes[name][:16]}… but {PROVENANCE_NAME} says {expected[name][:16]}…")
    return problems, hashes


def _signed_names(signature: Path) -> list[str]:
    """File names listed in the bundle's statement (read before verification, only to explain a failure)."""
    try:
        bundle = json.loads(signature.read_text())
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        return [r["name"] for r in statement["predicate"]["resources"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VerificationError([f"{SIGNATURE_NAME} is not a Sigstore bundle made by model-signing ({exc})"]) from exc


def _explain_signature_error(message: str) -> str:
    if message.startswith("Key mismatch") or "public key" in message.lower():
        return f"{SIGNATURE_NAME} was not made with this public key (wrong key, or not signed by this platform)"
    changed = re.findall(r"Hash mismatch for '([^']+)'", message)
    extra = re.search(r"Extra files found in model '[^']*': ([^\"'\]]+)", message)
    missing = re.search(r"Missing files in model '[^']*': ([^\"'\]]+)", message)
    parts = [f"{name} changed after signing" for name in changed]
    if extra:
        parts.append(f"not signed: {extra.group(1).strip()}")
    if missing:
        parts.append(f"signed but missing: {missing.group(1).strip()}")
    return "signature check failed: " + ("; ".join(parts) if parts else message)


def _check_signature(folder: Path, public_key: Path) -> list[str]:
    try:
        import model_signing
    except ImportError:  # pragma: no cover - a packaging problem, said plainly
        raise SourceError("verification needs model-signing: pip install model-signing pyopenssl") from None

    # Snapshots from huggingface_hub's cache are symlinks into its blob store: follow them.
    hashing = (
        model_signing.hashing.Config()
        .set_ignored_paths(paths=[SIGNATURE_NAME, HF_LOCAL_DIR_CACHE])
        .set_allow_symlinks(True)
    )
    verifier = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    try:
        verifier.set_hashing_config(hashing).verify(folder, folder / SIGNATURE_NAME)
    except ValueError as exc:
        return [_explain_signature_error(str(exc))]
    except Exception as exc:  # the Sigstore parser raises its own types on a mangled bundle
        return [f"{SIGNATURE_NAME} could not be checked: {type(exc).__name__}: {exc}"]
    return []


def _check_binding(
    provenance: dict[str, Any], revision: str, repo_id: str | None, expected_revision: str | None
) -> list[str]:
    """The signed release must be the one asked for: its repository named in (signed) provenance.json, its revision
    recomputed from its (signed) file list. Without this, a mirror could serve another repo's release, or a yanked
    one under a made-up revision, and the signature would still be valid."""
    problems = []
    if repo_id is not None:
        signed_repo = provenance.get("repo_id")
        if not signed_repo:
            problems.append(f"{PROVENANCE_NAME} does not name its repository, so it cannot be bound to {repo_id}")
        elif signed_repo != repo_id:
            problems.append(f"this is a release of {signed_repo}, not of {repo_id}")
    if expected_revision is not None and expected_revision != revision:
        problems.append(f"the files make revision {revision}, not {expected_revision} as asked")
    return problems


def verify_folder(
    folder: Path, public_key: Path, *, repo_id: str | None = None, revision: str | None = None
) -> Verified:
    """Raise VerificationError listing every problem, or return what was checked.

    `repo_id` / `revision`: what the caller asked for; the release must be exactly that (see _check_binding)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{folder}: no such folder")
    public_pem = _read_key(public_key)
    if not (folder / SIGNATURE_NAME).is_file():
        raise VerificationError([f"{SIGNATURE_NAME} is missing: this folder is not a signed release"])
    _signed_names(folder / SIGNATURE_NAME)
    provenance = _load_provenance(folder)
    problems, hashes = _check_files(folder, provenance)
    problems += _check_base_model(provenance)
    recomputed = release_revision(hashes)
    if not problems:  # with a file missing or changed, the revision differs for that reason, already said
        problems += _check_binding(provenance, recomputed, repo_id, revision)
    signature_problems = _check_signature(folder, public_key)
    # A content mismatch is already explained file by file above; a key mismatch is always worth saying.
    if not problems or any("public key" in p for p in signature_problems):
        problems += signature_problems
    if problems:
        raise VerificationError(problems)
    rounds = provenance.get("rounds") or []
    nodes = sorted({n.get("node", "") for r in rounds for n in r.get("nodes", []) if not n.get("error")})
    return Verified(
        folder=folder,
        key_fingerprint=key_fingerprint(public_pem),
        files=hashes,
        base_model=provenance["base_model"]["id"],
        base_model_files=len(provenance["base_model"]["files_sha256"]),
        rounds=len(rounds),
        nodes=nodes,
        repo_id=str(provenance.get("repo_id") or ""),
        revision=recomputed,
    )


def _read_key(public_key: Path) -> bytes:
    try:
        pem = Path(public_key).read_bytes()
    except OSError as exc:
        raise SourceError(f"{public_key}: cannot read the public key ({exc.strerror or exc})") from exc
    key_fingerprint(pem)  # fails clearly on something that is not a PEM public key
    return pem


# --- fetching from a site -------------------------------------------------------------------------


@dataclass
class RemoteRelease:
    site: str
    repo_id: str
    revision: str  # as asked: a commit sha or "main"


def parse_release_url(url: str) -> RemoteRelease:
    """`<site>/releases/<org>/<name>/[<revision>/]` (the catalog page) or `<site>/<org>/<name>` (HF style)."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise SourceError(f"{url}: not an http(s) URL")
    segments = [s for s in parts.path.split("/") if s]
    if segments[:1] == ["releases"]:
        segments = segments[1:]
    if len(segments) == 4 and segments[2] == "tree":  # <org>/<name>/tree/<rev>
        segments = [segments[0], segments[1], segments[3]]
    if len(segments) not in (2, 3):
        raise SourceError(f"{url}: expected <site>/releases/<org>/<name>/[<revision>/] or <site>/<org>/<name>")
    revision = segments[2] if len(segments) == 3 else "main"
    return RemoteRelease(f"{parts.scheme}://{parts.netloc}", f"{segments[0]}/{segments[1]}", revision)


def _get(session: Any, url: str, **kwargs: Any) -> Any:
    import requests

    try:
        response = session.get(url, timeout=30, **kwargs)
    except requests.RequestException as exc:
        raise SourceError(f"cannot reach {url}: {exc.__class__.__name__}") from exc
    if response.status_code == 404:
        code = response.headers.get("X-Error-Code", "not found")
        raise SourceError(f"{url}: {code} (404)")
    if response.status_code != 200:
        raise SourceError(f"{url}: HTTP {response.status_code}")
    return response


def fetch_public_key(session: Any, source: str, into: Path) -> Path:
    """A key given as a URL is downloaded; a path is used as is."""
    if not source.startswith(("http://", "https://")):
        return Path(source)
    path = into / "platform-key.pub"
    path.write_bytes(_get(session, source).content)
    return path


def download_release(session: Any, remote: RemoteRelease, into: Path) -> tuple[Path, str]:
    """Download every file of the release through the site's HF-compatible API; returns (folder, commit sha)."""
    api = f"{remote.site}/api/models/{remote.repo_id}/revision/{quote(remote.revision, safe='')}"
    info = _get(session, api).json()
    commit = info.get("sha", "")
    if not re.fullmatch(r"[0-9a-f]{40}", str(commit)):
        raise SourceError(f"{api}: the site did not name a revision")
    folder = into / commit
    for sibling in info.get("siblings", []):
        name = sibling["rfilename"]
        if name.startswith("/") or ".." in name.split("/"):
            raise SourceError(f"{api}: refusing the file name {name!r}")
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        url = f"{remote.site}/{remote.repo_id}/resolve/{commit}/{quote(name)}"
        with _get(session, url, stream=True) as response, target.open("wb") as fh:
            for chunk in response.iter_content(1 << 20):
                fh.write(chunk)
    return folder, commit


@contextmanager
def materialize(source: str, key: str | None) -> Iterator[tuple[Path, Path, RemoteRelease | None]]:
    """(folder, public key path, remote) for a local folder or a release URL; downloads go to a temp dir."""
    import requests

    with tempfile.TemporaryDirectory(prefix="bayanihan-verify-") as tmp, requests.Session() as session:
        remote = None
        if source.startswith(("http://", "https://")):
            remote = parse_release_url(source)
            folder, commit = download_release(session, remote, Path(tmp))
            if remote.revision != "main" and commit != remote.revision:
                raise VerificationError([f"asked for revision {remote.revision}, the site answered {commit}"])
            remote.revision = commit
            key = key or remote.site + KEY_URL_PATH
        else:
            folder = Path(source)
            if not folder.exists():
                raise SourceError(f"{source}: no such file or folder")
            if key is None:
                raise SourceError(f"give the platform's public key: --key PATH_OR_URL (it is served at {KEY_URL_PATH})")
        yield folder, fetch_public_key(session, key, Path(tmp)), remote


def verify(source: str, key: str | None = None, *, repo_id: str | None = None, revision: str | None = None) -> Verified:
    """Check a folder or a release URL. For a URL the repo id comes from the URL and the revision from the URL (a
    full revision) or, for `main`, from the site's answer; `repo_id`/`revision` bind a local folder the same way."""
    asked = None if revision in (None, "main") else revision
    with materialize(source, key) as (folder, public_key, remote):
        if remote is not None:
            # remote.revision is now the commit the site named; the URL's own revision, if one, was checked against it.
            repo_id, asked = remote.repo_id, remote.revision
        return verify_folder(folder, public_key, repo_id=repo_id, revision=asked)
