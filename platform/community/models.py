"""People who contribute, the nodes they run, and the one-time tokens that enroll a node."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models


def new_pseudonym() -> str:
    """Public handle for a node in provenance and model cards: says nothing about its owner."""
    return f"node-{secrets.token_hex(4)}"


class Contributor(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "waiting for approval"
        APPROVED = "approved"
        SUSPENDED = "suspended"
        REJECTED = "rejected"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    display_name = models.CharField(max_length=100)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    status_reason = models.TextField(blank=True)
    terms_version = models.CharField(max_length=20, blank=True)
    terms_accepted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.display_name


class Node(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active"
        SUSPENDED = "suspended"

    contributor = models.ForeignKey(Contributor, null=True, blank=True, on_delete=models.SET_NULL, related_name="nodes")
    name = models.CharField(max_length=100, help_text="Name the node gives itself in its node config.")
    pseudonym = models.CharField(max_length=32, unique=True, default=new_pseudonym, editable=False)
    # Flower node ids are unsigned 64-bit: larger than a signed BIGINT, so kept as text.
    flwr_node_id = models.CharField(max_length=20, unique=True, null=True, blank=True)
    public_key = models.TextField(blank=True, help_text="PEM public key registered with the SuperLink")
    api_token_hash = models.CharField(max_length=64, blank=True, editable=False)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)
    status_reason = models.TextField(blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    last_report = models.JSONField(default=dict, blank=True, help_text="What the node said in its last heartbeat")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # Keys are stored canonical (community.services.canonical_public_key), so one key is one row.
        constraints = [
            models.UniqueConstraint(
                fields=["public_key"], condition=~models.Q(public_key=""), name="one_node_per_public_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.pseudonym})"


class EnrollmentToken(models.Model):
    """Shown once, stored hashed, single use, scoped to one contributor, expires."""

    contributor = models.ForeignKey(Contributor, on_delete=models.CASCADE, related_name="enrollment_tokens")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    node = models.OneToOneField(Node, null=True, blank=True, on_delete=models.SET_NULL)


class UnadmittedNode(models.Model):
    """A key the SuperLink knew that the platform had not admitted (not an active Node): unregistered on sight.

    Found by `node_keys_sync` after every SuperLink start. Someone reached the Control API, or a revocation did not
    reach the SuperLink: either way staff should look, then mark it resolved.
    """

    flwr_node_id = models.CharField(max_length=20)
    public_key = models.TextField(blank=True)
    name = models.CharField(max_length=200, blank=True, help_text="The name it was registered under, if any")
    superlink_status = models.CharField(max_length=20, blank=True, help_text="Its status on the SuperLink when found")
    node = models.ForeignKey(
        Node, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The platform's (suspended) node with this key, when there is one",
    )  # fmt: skip
    found_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_note = models.TextField(blank=True)

    class Meta:
        ordering = ["-found_at"]

    def __str__(self) -> str:
        return f"SuperLink node {self.flwr_node_id} ({self.name or 'unnamed'})"
