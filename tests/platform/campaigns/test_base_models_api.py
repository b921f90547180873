"""GET /api/v1/base-models: what `join` checks a contributor's checkpoint against (no server paths)."""

from __future__ import annotations

import pytest

from campaigns.models import BaseCheckpoint

pytestmark = pytest.mark.django_db


def test_lists_each_base_model_with_its_file_hashes_and_no_server_path(client, tmp_path):
    BaseCheckpoint.objects.create(name="smol", hf_id="org/smol", path=str(tmp_path / "secret"), files={"a.json": "ab"})
    response = client.get("/api/v1/base-models")
    assert response.status_code == 200
    assert response.json() == {"base_models": [{"name": "smol", "hf_id": "org/smol", "files": {"a.json": "ab"}}]}
    assert "secret" not in response.content.decode()


def test_is_read_only(client):
    assert client.post("/api/v1/base-models").status_code == 405
