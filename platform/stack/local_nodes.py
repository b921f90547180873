"""Local contributor nodes for the demo and tests, enrolled exactly as a real contributor's would be."""

from __future__ import annotations

from pathlib import Path

from django.contrib.auth import get_user_model

from community.models import Contributor
from community.services import contributor_set_status, enrollment_token_create
from stack.runner import Stack


def local_contributor(name: str) -> Contributor:
    """An approved contributor account without a usable password (it only owns local demo nodes)."""
    user, _ = get_user_model().objects.get_or_create(username=f"{name}-owner")
    if not user.has_usable_password():
        user.set_unusable_password()
        user.save()
    contributor, _ = Contributor.objects.get_or_create(user=user, defaults={"display_name": f"{name} owner"})
    return contributor_set_status(contributor=contributor, status=Contributor.Status.APPROVED)


def start_local_nodes(stack: Stack, names: list[str], site_url: str, data_root: Path, model: Path) -> None:
    for name in names:
        token, _ = enrollment_token_create(contributor=local_contributor(name))
        stack.start_join(name, site_url, token, data_root / name, model)
