"""The platform's signing key: made private on first use, or given; only EC P-256/P-384 keys are accepted."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from django.core.exceptions import ImproperlyConfigured

from releases.signing import ensure_signing_key, public_key_fingerprint, public_key_path


def _write_key(path, key, mode=0o600):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(mode)


def test_key_is_made_on_first_use_private_with_its_public_key_beside_it(signing_key_in_tmp):
    assert not signing_key_in_tmp.exists()
    path = ensure_signing_key()
    assert path == signing_key_in_tmp and path.stat().st_mode & 0o777 == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert public_key_path().read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert ensure_signing_key() == path and public_key_fingerprint().startswith("SHA256:")  # made once


def test_a_given_p384_key_is_used(signing_key_in_tmp):
    key = ec.generate_private_key(ec.SECP384R1())
    _write_key(signing_key_in_tmp, key)
    ensure_signing_key()
    public = serialization.load_pem_public_key(public_key_path().read_bytes())
    assert public.public_numbers() == key.public_key().public_numbers()


def test_a_key_others_can_read_is_refused(signing_key_in_tmp):
    _write_key(signing_key_in_tmp, ec.generate_private_key(ec.SECP256R1()), mode=0o644)
    with pytest.raises(ImproperlyConfigured, match="chmod 600"):
        ensure_signing_key()


def test_a_key_model_signing_cannot_use_is_refused(signing_key_in_tmp):
    _write_key(signing_key_in_tmp, ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(ImproperlyConfigured, match="P-256 or P-384"):
        ensure_signing_key()
