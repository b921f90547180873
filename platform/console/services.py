"""Console writes: only the audit log. Every action itself is a service of the app that owns the data."""

from __future__ import annotations

from typing import Any

from django.db import models

from console.models import AuditEntry


def audit(*, by: Any, action: str, target: models.Model, **detail: Any) -> AuditEntry:
    """Record that `by` did `action` on `target`; `detail` is what else a reader needs (reason, new status)."""
    return AuditEntry.objects.create(
        actor=by if getattr(by, "pk", None) else None,
        actor_name=getattr(by, "username", "") or str(by),
        action=action,
        target_type=target._meta.model_name or type(target).__name__,
        target_id=str(target.pk),
        target_label=str(target)[:300],
        detail={k: v for k, v in detail.items() if v not in (None, "")},
    )
