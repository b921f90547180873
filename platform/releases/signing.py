"""The platform's release-signing key and OpenSSF model-signing (Sigstore bundle, offline, EC key).

The private key (P-256 or P-384) lives at settings.SIGNING_KEY, 0600, made on first use when missing; the
public key sits beside it as `<stem>.pub` and is served publicly so anyone can check a release.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from federation.artifacts import SIGNATURE_NAME
from federation.verify import key_fingerprint

ALLOWED_CURVES = ("secp256r1", "secp384r1")


def private_key_path() -> Path:
    return Path(settings.SIGNING_KEY)


def public_key_path() -> Path:
    return private_key_path().with_suffix(".pub")


def _create_private_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ImproperlyConfigured(f"{path}: the signing key must be private (chmod 600)")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in ALLOWED_CURVES:
        raise ImproperlyConfigured(f"{path}: the signing key must be an EC P-256 or P-384 key")
    return key


def ensure_signing_key() -> Path:
    """The private key's path, after making it (first use) and writing its public key beside it."""
    path = private_key_path()
    if not path.exists():
        _create_private_key(path)
    key = _load_private_key(path)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pub_path = public_key_path()
    if not pub_path.exists() or pub_path.read_bytes() != public:
        partial = pub_path.with_name(f".{pub_path.name}.partial")
        partial.write_bytes(public)
        partial.chmod(0o644)
        partial.replace(pub_path)
    return path


def public_key_pem() -> bytes:
    ensure_signing_key()
    return public_key_path().read_bytes()


def public_key_fingerprint() -> str:
    return key_fingerprint(public_key_pem())


def sign_folder(folder: Path) -> Path:
    """Write folder/model.sig: a Sigstore bundle over every file in the folder but itself."""
    import model_signing

    key = ensure_signing_key()
    signature = folder / SIGNATURE_NAME
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME])
    model_signing.signing.Config().use_elliptic_key_signer(private_key=key).set_hashing_config(hashing).sign(
        folder, signature
    )
    return signature
