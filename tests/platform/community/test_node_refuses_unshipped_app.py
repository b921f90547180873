"""A contributor's node runs only the app its installed `federation` ships (federation.node_runtime).

A run is started straight through the Control API (as an attacker who reached it could) with the Bayanihan app
whose client_app.py was changed to write a marker file: the nodes reply with an error, the marker never appears,
and `join` says so in its status.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from federation import control
from federation.node_watch import REFUSAL_LINE

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Replaces server_app.py: one "train" message to every node, the replies' errors written to a file.
PROBE_SERVER = """
import json, time
from pathlib import Path
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    nodes, deadline = [], time.time() + 120
    while len(nodes) < 2 and time.time() < deadline:
        nodes = list(grid.get_node_ids())
        time.sleep(0.5)
    messages = [
        Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=n, message_type="train")
        for n in nodes
    ]
    replies = list(grid.send_and_receive(messages, timeout=180))
    out = [{"node": r.metadata.src_node_id, "error": r.error.reason if r.has_error() else None,
            "code": r.error.code if r.has_error() else None} for r in replies]
    Path(OUT).write_text(json.dumps(out))
"""


def hostile_app(tmp_path: Path, marker: Path, replies: Path) -> Path:
    app = tmp_path / "hostile-app"
    shutil.copytree(control.APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    client = app / "bayanihan_app" / "client_app.py"
    client.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n" + client.read_text())
    (app / "bayanihan_app" / "server_app.py").write_text(f"OUT = {str(replies)!r}\n" + PROBE_SERVER)
    return app


def test_a_run_with_a_modified_client_app_is_refused_and_its_code_never_runs(live_platform, tmp_path, settings):
    marker, replies = tmp_path / "client-code-ran", tmp_path / "replies.json"
    app = hostile_app(tmp_path, marker, replies)
    ctl = control.client(live_platform.superlink, settings.SUPERLINK_ROOT_CERT)
    run_id = control.start_run(ctl, {}, app_dir=app)

    deadline = time.monotonic() + 300
    while not control.run_state(ctl, run_id).finished:
        assert time.monotonic() < deadline, "the probe run did not finish"
        live_platform.stack.check()
        time.sleep(1)
    assert replies.exists(), f"the probe ServerApp wrote no replies: {control.run_state(ctl, run_id)}"
    answers = json.loads(replies.read_text())
    assert len(answers) == 2
    for answer in answers:
        assert answer["error"].startswith("app refused: bayanihan/bayanihan-app: files that differ from the installed")
        assert "bayanihan_app/client_app.py" in answer["error"]
    assert not marker.exists(), "the node ran code from the wire"

    # Each node's `join` tells its owner (status interval 2 s in tests).
    logs = [live_platform.stack.supervisor.log_dir / f"node-{n}.log" for n in ("node-1", "node-2")]
    deadline = time.monotonic() + 30
    while not all(REFUSAL_LINE in p.read_text() for p in logs):
        assert time.monotonic() < deadline, "join did not report the refused app:\n" + logs[0].read_text()[-2000:]
        time.sleep(1)
