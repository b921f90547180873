"""Keys and certificates: the platform's own CA and SuperLink certificate, and node key pairs.

Private keys are written 0600 and never leave the machine that made them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def private_dir(path: Path) -> Path:
    """A folder only its owner can enter (0700), tightened if it already existed wider."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Create or replace a file readable by its owner only (0600 from the first byte)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bayanihan"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def ensure_superlink_tls(folder: Path, hosts: list[str]) -> dict[str, Path]:
    """A local CA and a SuperLink server certificate for `hosts` (names or IPs); made once, reused after.

    Production deployments pass their own files instead (see settings SUPERLINK_CA_CERT etc.).
    """
    paths = {"ca": folder / "ca.crt", "cert": folder / "superlink.crt", "key": folder / "superlink.key"}
    if all(p.exists() for p in paths.values()) and _covers(paths["cert"], hosts):
        return paths
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Bayanihan local CA"))
        .issuer_name(_name("Bayanihan local CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    private_dir(folder)
    # The CA key is not kept: nothing else is ever signed with it, so it cannot be stolen later.
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    write_private(paths["key"], _pem_key(server_key))
    return paths


def _covers(cert_path: Path, hosts: list[str]) -> bool:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(n) for n in san.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }
    return set(hosts) <= names


def certificate_fingerprint(pem: bytes) -> str:
    """sha256 of the DER certificate, as `openssl x509 -fingerprint -sha256` prints it."""
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def ensure_node_key(folder: Path) -> tuple[Path, bytes]:
    """The node's EC key pair (P-384, OpenSSH private key 0600). Returns (private key path, public key PEM)."""
    private = folder / "node_key"
    if private.exists():
        key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    else:
        key = ec.generate_private_key(ec.SECP384R1())
        openssh = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        write_private(private, openssh)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public_pem


def ensure_secret_file(path: Path) -> str:
    """A random secret kept in `path` (0600, folder 0700), made on first use; returns it.

    The platform's link secret lives here on the SuperLink host: the ServerApp reads it (its path reaches it in the
    environment of flower-superlink) to fetch its server config from the site and to sign its reports, so no secret
    ever travels in the Flower run config that every node receives.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        # Written whole under a private name, then linked into place: a reader never sees a half-written file,
        # and of two processes making it at once, the first link wins and both use that one.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write_private(tmp, secrets.token_urlsafe(32).encode())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
