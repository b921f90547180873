"""The platform's database decides which node keys the SuperLink admits (its own state is in memory)."""

from __future__ import annotations

import pytest
from flwr.proto.control_pb2 import ListNodesRequest, RegisterNodeRequest

from bayanihan_site.superlink import superlink_client
from community.models import Node, UnadmittedNode
from community.services import node_keys_sync
from federation import pki
from stack.local_nodes import local_contributor

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def public_key(tmp_path, name: str) -> str:
    return pki.ensure_node_key(tmp_path / name)[1].decode()


def superlink_nodes() -> dict[str, object]:
    """The SuperLink's node records by public key (PEM as registered)."""
    return {bytes(n.public_key).decode(): n for n in superlink_client().ListNodes(ListNodesRequest()).nodes_info}


def test_sync_admits_active_keys_only_and_unregisters_strangers(tls_superlink, tmp_path):
    owner = local_contributor("ana")
    active = Node.objects.create(contributor=owner, name="laptop", public_key=public_key(tmp_path, "a"))
    suspended = Node.objects.create(
        contributor=owner, name="old", public_key=public_key(tmp_path, "s"), status=Node.Status.SUSPENDED
    )
    # Someone who reached the Control API registered a key of their own.
    stranger_key = public_key(tmp_path, "x")
    stranger_id = (
        superlink_client().RegisterNode(RegisterNodeRequest(public_key=stranger_key.encode(), name="x")).node_id
    )

    result = node_keys_sync()

    active.refresh_from_db()
    nodes = superlink_nodes()
    assert result.registered == [active.pk] and result.unadmitted == [stranger_id]
    assert nodes[active.public_key].status == "registered"
    assert str(nodes[active.public_key].node_id) == active.flwr_node_id
    assert suspended.public_key not in nodes  # never registered
    assert nodes[stranger_key].status == "unregistered"
    flag = UnadmittedNode.objects.get()
    assert (flag.flwr_node_id, flag.name, flag.node) == (str(stranger_id), "x", None)

    # Idempotent: nothing more to do the second time.
    again = node_keys_sync()
    assert (again.registered, again.renumbered, again.unadmitted) == ([], [], [])
    assert UnadmittedNode.objects.count() == 1


def test_a_suspended_key_still_on_the_superlink_is_revoked_and_flagged(tls_superlink, tmp_path):
    key = public_key(tmp_path, "s")
    flwr_id = superlink_client().RegisterNode(RegisterNodeRequest(public_key=key.encode(), name="old")).node_id
    # Suspended in the database, but the SuperLink never heard of it (e.g. it was down then).
    node = Node.objects.create(name="old", public_key=key, flwr_node_id=str(flwr_id), status=Node.Status.SUSPENDED)

    assert node_keys_sync().unadmitted == [flwr_id]
    assert superlink_nodes()[key].status == "unregistered"
    assert UnadmittedNode.objects.get().node == node


def test_the_same_key_with_other_line_endings_is_the_same_key(tls_superlink, tmp_path):
    key = public_key(tmp_path, "a")
    flwr_id = superlink_client().RegisterNode(RegisterNodeRequest(public_key=key.encode(), name="a")).node_id
    node = Node.objects.create(name="a", public_key=key.replace("\n", "\r\n"))

    result = node_keys_sync()

    node.refresh_from_db()
    assert (result.registered, result.unadmitted) == ([], [])
    assert node.flwr_node_id == str(flwr_id)
