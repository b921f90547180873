"""Against a real SuperLink: a contributor set back to pending (console or admin form) has their node's key
unregistered, and the same key in CRLF PEM cannot enroll a second node."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from community.models import Contributor, Node
from community.services import contributor_set_status, contributor_signup, enrollment_token_create
from federation import pki

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def _status_on_superlink(flwr_node_id: str) -> str:
    from flwr.proto.control_pb2 import ListNodesRequest

    from bayanihan_site.superlink import superlink_client

    nodes = superlink_client().ListNodes(ListNodesRequest()).nodes_info
    return next((n.status for n in nodes if str(n.node_id) == flwr_node_id), "absent")


def _enroll(client, token: str, pem: str):
    return client.post(
        "/api/v1/nodes/enroll", {"token": token, "public_key": pem, "name": "laptop"}, content_type="application/json"
    )


def test_pending_in_the_console_unregisters_the_key_and_crlf_keys_do_not_enroll_twice(client, tls_superlink, tmp_path):
    ana = contributor_signup(username="ana", email="a@x.org", password="a-long-pass-phrase-42", accept_terms=True)
    contributor_set_status(contributor=ana, status=Contributor.Status.APPROVED)
    _, pem = pki.ensure_node_key(tmp_path / "key")
    assert _enroll(client, enrollment_token_create(contributor=ana)[0], pem.decode()).status_code == 201
    again = _enroll(client, enrollment_token_create(contributor=ana)[0], pem.decode().replace("\n", "\r\n"))
    assert again.status_code == 400 and "already enrolled" in again.json()["error"]
    node = Node.objects.get()
    assert _status_on_superlink(node.flwr_node_id) != "unregistered"

    staff = get_user_model().objects.create_user("staffer", "s@x.org", "pw-staff-123456", is_staff=True)
    client.force_login(staff)
    client.post(f"/console/contributors/{ana.pk}/status", {"status": "pending", "reason": "re-check"})
    node.refresh_from_db()
    assert node.status == Node.Status.SUSPENDED
    assert _status_on_superlink(node.flwr_node_id) in {"unregistered", "absent"}
