"""Submitting and following runs through Flower's Control API (protobuf over HTTP), no subprocess."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from flwr.cli.build import build_fab_from_disk
from flwr.common.serde import fab_to_proto, user_config_to_proto
from flwr.proto.control_pb2 import ListNodesRequest, ListRunsRequest, StartRunRequest, StopRunRequest
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.control.control_http_client import ControlHttpClient
from flwr.supercore.fab import Fab

APP_DIR = Path(__file__).resolve().parent / "flwr_app"


@dataclass(frozen=True)
class RunState:
    status: str  # pending | starting | running | finished
    sub_status: str  # completed | failed | stopped (when finished)
    details: str

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def succeeded(self) -> bool:
        return self.finished and self.sub_status == "completed"


def client(address: str, root_certificates: str | None = None) -> ControlHttpClient:
    """`address` is host:port of the SuperLink; TLS when a CA file is given."""
    return ControlHttpClient.from_server_address(
        server_address=address,
        insecure=root_certificates is None,
        root_certificates=root_certificates,
        interceptors=[],
    )


def build_fab(app_dir: Path = APP_DIR) -> Fab:
    fab_bytes = build_fab_from_disk(app_dir)
    return Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})


def start_run(control: ControlHttpClient, run_config: dict[str, Any], app_dir: Path = APP_DIR) -> int:
    request = StartRunRequest(
        fab=fab_to_proto(build_fab(app_dir)),
        override_config=user_config_to_proto(run_config),
        federation=NOOP_FEDERATION_ID,
    )
    response = control.StartRun(request)
    if not response.HasField("run_id"):
        raise RuntimeError(f"SuperLink did not start the run: {response.note or 'no reason given'}")
    return int(response.run_id)


def run_record(control: ControlHttpClient, run_id: int) -> Any:
    """The SuperLink's record of a run (flwr.proto.run_pb2.Run: status, pending_at/starting_at/running_at, ...)."""
    try:
        runs = control.ListRuns(ListRunsRequest(run_id=run_id)).run_dict
    except httpx.HTTPStatusError as exc:
        # Flower 1.42 answers a run id it does not know with 404 (seen after an in-memory SuperLink restart).
        if exc.response.status_code == 404:
            raise LookupError(f"run {run_id} is unknown to the SuperLink") from None
        raise
    if run_id not in runs:
        raise LookupError(f"run {run_id} is unknown to the SuperLink")
    return runs[run_id]


def run_state(control: ControlHttpClient, run_id: int) -> RunState:
    status = run_record(control, run_id).status
    return RunState(status.status, status.sub_status, status.details)


def online_node_ids(control: ControlHttpClient) -> set[int]:
    """Ids of the SuperNodes connected to the SuperLink right now."""
    return {int(n.node_id) for n in control.ListNodes(ListNodesRequest()).nodes_info if n.status == "online"}


def stop_run(control: ControlHttpClient, run_id: int) -> None:
    control.StopRun(StopRunRequest(run_id=run_id))
