"""People who contribute, and the nodes they run."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models


def new_pseudonym() -> str:
    """Public handle for a node in provenance and model cards: says nothing about its owner."""
    return f"node-{secrets.token_hex(4)}"


class Contributor(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    display_name = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.display_name


class Node(models.Model):
    contributor = models.ForeignKey(Contributor, null=True, blank=True, on_delete=models.SET_NULL, related_name="nodes")
    name = models.CharField(max_length=100, help_text="Name the node gives itself in its node config.")
    pseudonym = models.CharField(max_length=32, unique=True, default=new_pseudonym, editable=False)
    # Flower node ids are unsigned 64-bit: larger than a signed BIGINT, so kept as text.
    flwr_node_id = models.CharField(max_length=20, unique=True, null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.pseudonym})"
