"""The hostile test node: a real SuperNode whose replies are made hostile after the installed ClientApp ran, with a
loud warning; the contributor's own `node` command has no such switch, and the server refuses what it sends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from federation import control, procs
from federation.config import ServerConfig, ServerPaths, TrainConfig
from federation.packing import LAYOUT_KEY, Layout, PackingError, pack_records, unpack_content
from federation.report import LOCAL_PATHS_ENV
from testbed.attack import SCALE
from testbed.hostile_node import hostile_runtime_bin
from testbed.hostile_runtime import turn_hostile


def _federation(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "federation", *args], capture_output=True, text=True, timeout=120,
                          env=procs.flower_env(home))  # fmt: skip


def test_the_contributors_node_command_has_no_attack_switch(tmp_path):
    assert "attack" not in _federation("node", "--help", home=tmp_path).stdout
    good = tmp_path / "data.jsonl"
    good.write_text('{"text": "a sentence"}\n')
    refused = _federation("node", "--superlink", "127.0.0.1:9", "--data", str(good), "--attack", "scale",
                          home=tmp_path)  # fmt: skip
    assert refused.returncode == 2 and "unrecognized arguments: --attack scale" in refused.stderr


def test_hostile_node_warns_loudly_before_its_supernode_starts(tmp_path):
    good = tmp_path / "data.jsonl"
    good.write_text('{"text": "a sentence"}\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed.hostile_node", "--attack", "scale", "--superlink", "127.0.0.1:9",
         "--data", str(good), "--home", str(tmp_path / "h")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=procs.flower_env(tmp_path / "h"),
    )  # fmt: skip
    try:
        lines = [proc.stderr.readline() for _ in range(3)]  # printed before the SuperNode is started
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "ATTACK MODE 'scale'" in lines[1] and "multiplied by 50" in lines[1]
    assert "Never point it at a real campaign" in lines[2]


def test_the_hostile_nodes_clientapp_is_the_hostile_runtime_in_its_mode(tmp_path):
    bin_dir = hostile_runtime_bin(tmp_path, "sign-flip")
    script = bin_dir / "flwr-clientapp"
    assert bin_dir.stat().st_mode & 0o777 == 0o700 and script.stat().st_mode & 0o777 == 0o700
    assert "BAYANIHAN_ATTACK=sign-flip" in script.read_text() and "-m testbed.hostile_runtime" in script.read_text()
    # Without a known mode the runtime refuses to run at all rather than run as an honest node.
    bad = subprocess.run([sys.executable, "-m", "testbed.hostile_runtime"], capture_output=True, text=True,
                         env={**procs.flower_env(tmp_path), "BAYANIHAN_ATTACK": "nope"}, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "BAYANIHAN_ATTACK='nope' is not one of nan" in bad.stderr


def _packed(arrays: dict[str, np.ndarray], dtype: str, **extra) -> RecordDict:
    records, layout = pack_records(arrays, dtype)
    return RecordDict({"arrays": records, LAYOUT_KEY: layout, **extra})


def _unpacked(content: RecordDict) -> dict[str, np.ndarray]:
    layout = Layout.from_record(content[LAYOUT_KEY])
    return unpack_content(content, dict(zip(layout.names, layout.shapes, strict=True)), layout.dtype)


@pytest.fixture
def task_identity():
    """Flower stamps messages made outside its runtime with this process's task identity."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 5
    yield
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = None


def test_turn_hostile_rewrites_only_the_packed_adapter_in_the_same_wire_dtype(task_identity):
    received = {"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.float32)}
    trained = {"a": np.full((2, 3), 0.5, np.float32), "b": np.full(4, 1.25, np.float32)}
    instruction = Message(_packed(received, "float16", config=ConfigRecord({"server-round": 1})), dst_node_id=5,
                          message_type="train")  # fmt: skip
    metrics = MetricRecord({"num-examples": 3})
    reply = Message(_packed(trained, "float16", metrics=metrics), reply_to=instruction)

    scaled = turn_hostile("scale", instruction, reply).content
    assert Layout.from_record(scaled[LAYOUT_KEY]).dtype == "float16"
    got = _unpacked(scaled)
    assert np.allclose(got["a"], SCALE * 0.5) and np.allclose(got["b"], 1 + SCALE * 0.25)
    assert scaled["metrics"]["num-examples"] == 3  # everything else as the ClientApp made it

    instruction = Message(_packed(received, "float32"), dst_node_id=5, message_type="train")
    reply = Message(_packed(trained, "float32"), reply_to=instruction)
    with pytest.raises(PackingError, match="non-finite values"):  # what the server's layout check will say too
        _unpacked(turn_hostile("nan", instruction, reply).content)


# --- end to end: a real SuperLink, two honest nodes and a hostile one, one round ---------------------------------


@pytest.mark.integration
def test_a_hostile_nodes_nan_update_reaches_the_server_and_is_refused_by_name(tmp_path, tiny_checkpoint, tiny_corpus):
    paths_dir, out = tmp_path / "paths", tmp_path / "server"
    paths_dir.mkdir()
    (paths_dir / "1.json").write_text(
        json.dumps(ServerPaths(str(tiny_checkpoint), str(tiny_corpus / "heldout.jsonl"), str(out)).to_json())
    )
    port = procs.free_port()
    address = f"127.0.0.1:{port}"
    nodes = {"honest-1": "node-1", "honest-2": "node-2", "hostile": "node-1"}
    with procs.Supervisor(tmp_path / "logs") as sup:
        link = tmp_path / "superlink"
        link.mkdir()
        env = procs.flower_env(link / "flwr-home", {LOCAL_PATHS_ENV: str(paths_dir)})  # no site: paths from a file
        proc = sup.start("superlink", procs.superlink_command(link, "127.0.0.1", port), env=env, cwd=link)
        procs.wait_http(f"http://{address}/health", 60, proc)
        for name, data in nodes.items():
            runner = ["testbed.hostile_node", "--attack", "nan"] if name == "hostile" else ["federation", "node"]
            home = tmp_path / name
            sup.start(name, [sys.executable, "-m", *runner, "--superlink", address, "--data",
                             str(tiny_corpus / data), "--name", name, "--model", str(tiny_checkpoint),
                             "--home", str(home)], env=procs.flower_env(home))  # fmt: skip

        train = TrainConfig(local_steps=1, seq_len=32, batch_size=2, threads=1, max_eval_records=2)
        server = ServerConfig(campaign_id=1, num_rounds=1, min_nodes=len(nodes), round_timeout=300,
                              max_heldout_records=4)  # fmt: skip
        client = control.client(address)
        run_id = control.start_run(client, {**train.to_run_config(), **server.to_run_config()})
        deadline = time.monotonic() + 600
        while not (state := control.run_state(client, run_id)).finished:
            sup.check()
            assert time.monotonic() < deadline, f"run {run_id} still {state.status} after 600 s"
            time.sleep(1)
        assert state.succeeded, f"{state.sub_status}: {state.details}"
        hostile_log = (tmp_path / "logs" / "hostile.log").read_text()

    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    (merged,) = [e for e in events if e["type"] == "round" and e["round"] == 1]
    rows = {row["name"]: row for row in merged["nodes"]}
    assert sorted(rows) == sorted(nodes)
    assert "non-finite values (NaN/inf)" in rows["hostile"]["rejected"]  # seen, refused, and why, on record
    assert rows["hostile"]["error"] == ""  # it did reply: a refusal, not a node failure
    assert all(not rows[n]["rejected"] and not rows[n]["error"] for n in ("honest-1", "honest-2"))
    (scored,) = [e for e in events if e["type"] == "evaluated" and e["round"] == 1]
    assert scored["eval_loss"] is not None and np.isfinite(scored["eval_loss"])  # the honest two were merged
    assert "ATTACK MODE 'nan'" in hostile_log
