"""Console fixtures: a staff user, a contributor, a registered base model and a held-out file."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from campaigns.models import BaseCheckpoint
from community.models import Contributor

PASSWORD = "a-long-pass-phrase-42"


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user("staffer", "staff@example.org", PASSWORD, is_staff=True)


@pytest.fixture
def contributor(db) -> Contributor:
    user = get_user_model().objects.create_user("ana", "ana@example.org", PASSWORD)
    return Contributor.objects.create(user=user, display_name="ana")


@pytest.fixture
def base(db, tmp_path) -> BaseCheckpoint:
    return BaseCheckpoint.objects.create(name="tiny", hf_id="test/tiny", path=str(tmp_path))


@pytest.fixture
def heldout(tmp_path) -> str:
    path = tmp_path / "heldout.jsonl"
    path.write_text('{"text": "x"}\n')
    return str(path)
