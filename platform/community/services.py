"""Writes for contributors and nodes: sign-up, approval, enrollment, heartbeat, suspension."""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from bayanihan_site.superlink import superlink_client
from community.models import Contributor, EnrollmentToken, Node, UnadmittedNode

log = logging.getLogger(__name__)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def contributor_signup(*, username: str, email: str, password: str, accept_terms: bool) -> Contributor:
    if not accept_terms:
        raise ValidationError({"accept_terms": "You must accept the contribution terms to sign up."})
    User = get_user_model()
    if User.objects.filter(username__iexact=username).exists():
        raise ValidationError({"username": "That username is taken."})
    user = User(username=username, email=email)
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise ValidationError({"password": exc.messages}) from exc
    with transaction.atomic():
        user.set_password(password)
        user.save()
        return Contributor.objects.create(
            user=user,
            display_name=username,
            terms_version=settings.TERMS_VERSION,
            terms_accepted_at=timezone.now(),
        )


def contributor_set_status(*, contributor: Contributor, status: str, by: Any = None, reason: str = "") -> Contributor:
    """The one way a contributor's status changes (console, admin actions and the admin change form all call it).

    Any status but approved revokes every node of the contributor on the SuperLink and voids their unused
    enrollment tokens: only an approved contributor's nodes may take part."""
    if status not in Contributor.Status.values:
        raise ValidationError(f"unknown status {status!r}")
    contributor.status = status
    contributor.status_reason = reason
    contributor.save(update_fields=["status", "status_reason"])
    if status != Contributor.Status.APPROVED:
        label = Contributor.Status(status).label
        for node in contributor.nodes.filter(status=Node.Status.ACTIVE):
            node_suspend(node=node, by=by, reason=reason or f"contributor {label}")
        contributor.enrollment_tokens.filter(used_at=None, expires_at__gt=timezone.now()).update(
            expires_at=timezone.now()
        )
    return contributor


def enrollment_token_create(*, contributor: Contributor) -> tuple[str, EnrollmentToken]:
    """Returns the token in clear once; only its hash is kept."""
    if contributor.status != Contributor.Status.APPROVED:
        raise ValidationError("Only approved contributors can enroll nodes.")
    # Caps (settings) keep one account from enrolling enough nodes to outvote honest ones under median/Krum.
    open_tokens = contributor.enrollment_tokens.filter(used_at=None, expires_at__gt=timezone.now()).count()
    if open_tokens >= settings.MAX_OPEN_TOKENS_PER_CONTRIBUTOR:
        raise ValidationError(
            f"You already have {open_tokens} unused enrollment token(s) (at most "
            f"{settings.MAX_OPEN_TOKENS_PER_CONTRIBUTOR}); use one or let it expire first."
        )
    active = contributor.nodes.filter(status=Node.Status.ACTIVE).count()
    if active + open_tokens >= settings.MAX_NODES_PER_CONTRIBUTOR:
        raise ValidationError(
            f"You have {active} active node(s) and {open_tokens} unused token(s); a contributor may run at most "
            f"{settings.MAX_NODES_PER_CONTRIBUTOR} nodes. Ask staff if you need more."
        )
    token = f"bye_{secrets.token_urlsafe(32)}"
    record = EnrollmentToken.objects.create(
        contributor=contributor,
        token_hash=_hash(token),
        expires_at=timezone.now() + timedelta(hours=settings.ENROLLMENT_TOKEN_HOURS),
    )
    return token, record


@dataclass(frozen=True)
class Enrollment:
    node: Node
    api_token: str  # the node's own credential for the status API, shown once
    superlink: str
    ca_certificate: str


def canonical_public_key(pem: str) -> str:
    """The key re-encoded as SubjectPublicKeyInfo PEM with LF line ends, or ValidationError.

    One key has many PEM spellings (CRLF line ends, other line widths, trailing spaces): comparing or storing the text
    as sent let the same key enroll twice. The canonical form is what is compared, stored (unique) and registered."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnicodeError) as exc:
        raise ValidationError({"public_key": "not a PEM public key"}) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in {"secp256r1", "secp384r1", "secp521r1"}:
        raise ValidationError({"public_key": "must be an EC key on a NIST curve (P-256, P-384 or P-521)"})
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def node_enroll(*, token: str, public_key: str, name: str) -> Enrollment:
    """Spend an enrollment token: register the node's public key with the SuperLink, create the Node."""
    public_key = canonical_public_key(public_key)
    name = (name or "node").strip()[:100]
    with transaction.atomic():
        record = (
            EnrollmentToken.objects.select_for_update()
            .select_related("contributor")
            .filter(token_hash=_hash(token or ""))
            .first()
        )
        # One message for every refusal: a caller learns nothing about which tokens exist.
        if (
            record is None
            or record.used_at is not None
            or record.expires_at <= timezone.now()
            or record.contributor.status != Contributor.Status.APPROVED
        ):
            raise PermissionError("This enrollment token is not valid (unknown, used, expired, or not yours to use).")
        if Node.objects.filter(public_key=public_key).exists():
            raise ValidationError({"public_key": "This key is already enrolled; run join again without a token."})
        # Locks the contributor's row: concurrent enrollments with several tokens are counted one after another.
        Contributor.objects.select_for_update().filter(pk=record.contributor_id).first()
        if record.contributor.nodes.filter(status=Node.Status.ACTIVE).count() >= settings.MAX_NODES_PER_CONTRIBUTOR:
            raise PermissionError(
                f"This contributor already runs {settings.MAX_NODES_PER_CONTRIBUTOR} active nodes (the most allowed)."
            )
        response = superlink_client().RegisterNode(_register_request(public_key, name))
        api_token = f"byn_{secrets.token_urlsafe(32)}"
        try:
            with transaction.atomic():
                node = Node.objects.create(
                    contributor=record.contributor,
                    name=name,
                    flwr_node_id=str(response.node_id),
                    public_key=public_key,
                    api_token_hash=_hash(api_token),
                )
        except IntegrityError as exc:  # the same key enrolled concurrently by another request: undo our registration
            from flwr.proto.control_pb2 import UnregisterNodeRequest

            superlink_client().UnregisterNode(UnregisterNodeRequest(node_id=int(response.node_id)))
            raise ValidationError({"public_key": "This key is already enrolled."}) from exc
        record.used_at = timezone.now()
        record.node = node
        record.save(update_fields=["used_at", "node"])
    ca = open(settings.SUPERLINK_ROOT_CERT, encoding="ascii").read()
    return Enrollment(node, api_token, settings.SUPERLINK_PUBLIC_ADDRESS, ca)


def _register_request(public_key: str, name: str) -> Any:
    from flwr.proto.control_pb2 import RegisterNodeRequest

    return RegisterNodeRequest(public_key=public_key.encode(), name=name)


def node_by_api_token(token: str) -> Node | None:
    if not token:
        return None
    return Node.objects.select_related("contributor").filter(api_token_hash=_hash(token)).first()


def node_heartbeat(*, node: Node, report: dict[str, Any]) -> Node:
    node.last_seen = timezone.now()
    node.last_report = {k: report[k] for k in ("state", "supernode") if k in report}
    node.save(update_fields=["last_seen", "last_report"])
    return node


def node_suspend(*, node: Node, by: Any = None, reason: str = "") -> Node:
    """Revoke on the SuperLink first: from then on the node's key is refused, whatever the database says."""
    from flwr.proto.control_pb2 import UnregisterNodeRequest

    if node.flwr_node_id and node.status == Node.Status.ACTIVE:
        superlink_client().UnregisterNode(UnregisterNodeRequest(node_id=int(node.flwr_node_id)))
    node.status = Node.Status.SUSPENDED
    node.status_reason = reason or "suspended by staff"
    node.save(update_fields=["status", "status_reason"])
    log.info("node %s suspended by %s: %s", node.pk, getattr(by, "username", by), node.status_reason)
    return node


# --- the SuperLink's admitted keys follow the platform's database ---------------------------


@dataclass(frozen=True)
class KeySync:
    """What one node_keys_sync did: ids are Flower node ids on the SuperLink it talked to."""

    registered: list[int]  # Node pks whose key was (re-)registered
    renumbered: list[int]  # Node pks whose flwr_node_id changed
    unadmitted: list[int]  # Flower node ids the platform did not admit: unregistered and flagged
    failed: list[int] = field(default_factory=list)  # Node pks whose key the SuperLink refused (logged)


def _key_id(pem: bytes | str) -> bytes:
    """Keys compare by their DER form: the same key with other line endings or armour is the same key."""
    raw = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError):
        return raw.strip()
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def node_keys_sync() -> KeySync:
    """Make the SuperLink admit exactly the platform's ACTIVE nodes; call after every SuperLink (re)start.

    The SuperLink keeps its state in memory (procs.superlink_command): after a restart it knows no key, so every
    active node's key is registered again, before nodes reconnect, and Node.flwr_node_id follows the id Flower
    hands out (a fresh random one on each registration). Suspended nodes are never registered. A key the SuperLink
    knows that the platform did not admit (registered through the Control API behind the platform's back, or a
    revocation that never reached the SuperLink) is unregistered and recorded as an UnadmittedNode for staff.
    Idempotent: a second call registers nothing.
    """
    from flwr.proto.control_pb2 import ListNodesRequest, UnregisterNodeRequest

    client = superlink_client()
    known = {
        _key_id(info.public_key): info
        for info in client.ListNodes(ListNodesRequest()).nodes_info
        if info.status != "unregistered"  # Flower keeps unregistered keys; they can never come back
    }
    registered: list[int] = []
    renumbered: list[int] = []
    failed: list[int] = []
    for node in Node.objects.filter(status=Node.Status.ACTIVE).exclude(public_key="").order_by("pk"):
        info = known.pop(_key_id(node.public_key), None)
        if info is not None:
            flwr_id = str(info.node_id)
        else:
            try:
                flwr_id = str(client.RegisterNode(_register_request(node.public_key, node.name)).node_id)
            except Exception as exc:  # e.g. a key Flower saw unregistered (permanent there): the others still go
                log.error("node %s: the SuperLink refused to register its key: %s", node.pk, exc)
                failed.append(node.pk)
                continue
            registered.append(node.pk)
        if node.flwr_node_id != flwr_id:
            with transaction.atomic():
                # Ids are random 64-bit numbers, but a stale row (e.g. a node recorded by id from a round report)
                # may hold the new one: it no longer names anything on this SuperLink.
                Node.objects.filter(flwr_node_id=flwr_id).exclude(pk=node.pk).update(flwr_node_id=None)
                node.flwr_node_id = flwr_id
                node.save(update_fields=["flwr_node_id"])
            renumbered.append(node.pk)
    unadmitted: list[int] = []
    by_key = {_key_id(n.public_key): n for n in Node.objects.exclude(public_key="").exclude(status=Node.Status.ACTIVE)}
    for key, info in known.items():
        client.UnregisterNode(UnregisterNodeRequest(node_id=int(info.node_id)))
        UnadmittedNode.objects.create(
            flwr_node_id=str(info.node_id),
            public_key=bytes(info.public_key).decode(errors="replace")[:4000],
            name=(info.name or "")[:200],
            superlink_status=info.status[:20],
            node=by_key.get(key),
        )
        unadmitted.append(int(info.node_id))
        log.warning("SuperLink node %s (%r) was not admitted by the platform: unregistered", info.node_id, info.name)
    if registered or renumbered or unadmitted:
        log.info("node keys synced: %d registered, %d renumbered, %d unadmitted unregistered",
                 len(registered), len(renumbered), len(unadmitted))  # fmt: skip
    return KeySync(registered, renumbered, unadmitted, failed)
