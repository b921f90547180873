"""A node's warm worker, with real processes: one training per Flower message id (a relaunched task attaches), an
error reply when the worker is gone, a stale worker refuses, warm equals cold, the socket is private."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from federation import node_runtime, procs, task
from federation import warm_protocol as wire
from federation.config import TrainConfig
from federation.packing import LAYOUT_KEY, Layout, pack_records, unpack_content
from federation.task import get_adapter_state, lora_model
from federation.warm_worker import EXIT_STALE, STATUS_FILE, Worker

CFG = TrainConfig(lora_r=4, lora_alpha=8, local_steps=4, lr=0.01, seq_len=64, batch_size=4, threads=1,
                  max_eval_records=4)  # fmt: skip

# A shim as node_runtime runs it, minus Flower's runtime API: the job's message and context come from files.
SHIM = """
import sys
from pathlib import Path
from federation import node_runtime, warm_protocol as wire
message = wire.decode_message(Path(sys.argv[1]).read_bytes())
context = wire.decode_context(Path(sys.argv[2]).read_bytes())
try:
    reply = node_runtime.run_job(message, context)
except Exception as exc:
    print("ERROR", exc, flush=True)
    sys.exit(3)
finally:
    print("TORCH", "torch" in sys.modules, flush=True)
Path(sys.argv[3]).write_bytes(wire.encode_message(reply))
"""


def job(
    model: Path, data: Path, server_round: int, cfg: TrainConfig = CFG, node_id: int = 11
) -> tuple[Message, Context]:
    """A train instruction as a SuperNode delivers it: the global adapter, the round, a message id."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    state = get_adapter_state(lora_model(str(model), cfg))
    state = {k: v + 0.01 * server_round for k, v in state.items()}  # each round its own global adapter
    arrays, layout = pack_records({k: v.numpy() for k, v in state.items()}, "float32")  # as the ServerApp sends it
    content = RecordDict({"arrays": arrays, LAYOUT_KEY: layout, "config": ConfigRecord({"server-round": server_round})})
    message = Message(content, dst_node_id=node_id, message_type="train")
    message.metadata.__dict__["_message_id"] = message.object_id  # what Flower's pull_task_input sets
    run_config = {**cfg.to_run_config(), "base-model-path": str(model), "start-round": 0}
    context = Context(run_id=7, node_id=node_id, node_config={"data-path": str(data), "name": f"n{node_id}"},
                      state=RecordDict(),
                      run_config=run_config)  # fmt: skip
    return message, context


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "node"
    path.mkdir(mode=0o700)
    return path


class Running:
    def __init__(self, home: Path, grace: float) -> None:
        self.home = home
        self.log = home / "warm-worker.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "federation.warm_worker", "--home", str(home), "--grace", str(grace)],
            env=procs.flower_env(home / "flwr-home"), stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not wire.socket_path(home).exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the worker did not listen within 120 s"
            time.sleep(0.2)

    def status(self) -> dict:
        return json.loads((self.home / STATUS_FILE).read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture
def start_worker(home: Path) -> Iterator:
    started: list[Running] = []

    def start(grace: float = 120.0) -> Running:
        started.append(Running(home, grace))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def run_shim(home: Path, tmp: Path, message: Message, context: Context, name: str,
             env: dict[str, str] | None = None) -> subprocess.Popen:  # fmt: skip
    (tmp / f"{name}.msg").write_bytes(wire.encode_message(message))
    (tmp / f"{name}.ctx").write_bytes(wire.encode_context(context))
    shim_env = procs.flower_env(home / "flwr-home", {wire.ENV_SOCKET: str(wire.socket_path(home))} | (env or {}))
    return subprocess.Popen(
        [sys.executable, "-c", SHIM, str(tmp / f"{name}.msg"), str(tmp / f"{name}.ctx"), str(tmp / f"{name}.out")],
        env=shim_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def unpacked(message: Message) -> dict[str, torch.Tensor]:
    """A reply's adapter, unpacked against the layout it carries (the server checks it against its own)."""
    layout = Layout.from_record(message.content[LAYOUT_KEY])
    expected = dict(zip(layout.names, layout.shapes, strict=True))
    return {k: torch.from_numpy(v) for k, v in unpack_content(message.content, expected, layout.dtype).items()}


def reply_state(raw: bytes) -> dict[str, torch.Tensor]:
    return unpacked(wire.decode_message(raw))


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# --- the contract -------------------------------------------------------------------------------------------------


def test_headers_round_trip_and_bad_frames_are_refused(tiny_checkpoint, tiny_corpus):
    header = wire.JobHeader(message_id="abc", federation="0.1.0", code="f" * 64, launched_at=12.5)
    assert wire.JobHeader.decode(header.encode()) == header
    reply = wire.ReplyHeader(ok=False, reason="why", attached=True)
    assert wire.ReplyHeader.decode(reply.encode()) == reply
    with pytest.raises(wire.ChannelError, match="not a job header"):
        wire.JobHeader.decode(b'{"message_id": "x"}')
    with pytest.raises(wire.ChannelError, match="message id must be"):
        wire.JobHeader.decode(wire.JobHeader("", "v", "c", 0.0).encode())
    message, context = job(tiny_checkpoint, tiny_corpus / "node-1", 1)
    back = wire.decode_message(wire.encode_message(message))
    assert back.metadata.message_id == message.metadata.message_id
    assert wire.decode_context(wire.encode_context(context)).run_config == context.run_config
    import socket

    left, right = socket.socketpair()
    with left, right:
        left.sendall(wire._LEN.pack(wire.MAX_FRAME + 1))
        with pytest.raises(wire.ChannelError, match="exceeds the limit"):
            wire.recv_frame(right)


def test_the_serde_the_channel_uses_is_in_the_self_tested_internals():
    targets = {target for target, _ in node_runtime._INTERNALS.values()}
    assert {"flwr.common.serde:message_to_proto", "flwr.common.serde:context_from_proto"} <= targets
    node_runtime.self_test()


# --- the worker ---------------------------------------------------------------------------------------------------


def test_the_socket_is_private_and_a_shared_home_is_refused(home, start_worker, tmp_path):
    start_worker()
    mode = stat.S_IMODE(os.stat(wire.socket_path(home)).st_mode)
    assert stat.S_ISSOCK(os.stat(wire.socket_path(home)).st_mode) and mode == 0o600
    open_home = tmp_path / "open"
    open_home.mkdir(mode=0o755)
    open_home.chmod(0o755)
    result = subprocess.run([sys.executable, "-m", "federation.warm_worker", "--home", str(open_home)],
                            env=procs.flower_env(tmp_path), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode != 0 and "must be private (0700)" in result.stderr


def test_a_warm_job_equals_a_cold_one_and_the_shim_imports_no_torch(
    home, start_worker, tmp_path, tiny_checkpoint, tiny_corpus, monkeypatch
):
    worker = start_worker()
    data = tiny_corpus / "node-1"
    first, second = job(tiny_checkpoint, data, 1), job(tiny_checkpoint, data, 2)
    for name, (message, context) in (("r1", first), ("r2", second)):  # round 2 runs on what round 1 loaded
        shim = run_shim(home, tmp_path, message, context, name)
        out, _ = shim.communicate(timeout=600)
        assert shim.returncode == 0, out
        assert "TORCH False" in out  # the shim handed the job over; torch stayed in the worker
    assert worker.status()["jobs"]["run"] == 2
    warm = wire.decode_message((tmp_path / "r2.out").read_bytes())

    # The same job cold: a fresh model in this process, as a node without a worker runs it.
    monkeypatch.delenv(wire.ENV_SOCKET, raising=False)
    monkeypatch.setattr(task, "_warm_model", None)
    cold = node_runtime.run_job(*second)
    assert warm.metadata.reply_to_message_id == second[0].metadata.message_id
    cold_state, warm_state = unpacked(cold), unpacked(warm)
    assert cold_state.keys() == warm_state.keys()
    for key in cold_state:
        assert torch.equal(cold_state[key], warm_state[key]), key
    for key in ("train-loss", "val-loss-after", "tokens"):  # node-validation "after" (default): no loss before
        assert cold.content["metrics"][key] == warm.content["metrics"][key], key
    # startup-seconds is the shim's own start, not the worker's hours of uptime.
    assert 0 <= warm.content["metrics"]["startup-seconds"] < 120


def test_a_lora_job_after_an_ffa_job_on_the_same_warm_model_trains_a_again_as_a_cold_one_would(
    home, start_worker, tmp_path, tiny_checkpoint, tiny_corpus, monkeypatch
):
    worker = start_worker()
    data = tiny_corpus / "node-1"
    ffa = job(tiny_checkpoint, data, 1, TrainConfig(**{**vars(CFG), "lora_variant": "ffa"}))
    lora = job(tiny_checkpoint, data, 2)  # another campaign, same LoRA shape: the worker reuses its model
    for name, (message, context) in (("ffa", ffa), ("lora", lora)):
        shim = run_shim(home, tmp_path, message, context, name)
        out, _ = shim.communicate(timeout=600)
        assert shim.returncode == 0, out
    assert worker.status()["jobs"]["run"] == 2
    sent = unpacked(lora[0])
    after_ffa, after_lora = (
        reply_state((tmp_path / "ffa.out").read_bytes()),
        reply_state((tmp_path / "lora.out").read_bytes()),
    )
    assert after_ffa and all("lora_B" in k for k in after_ffa) and set(after_ffa) < set(after_lora)
    assert all(not torch.equal(after_lora[k], sent[k]) for k in sent if "lora_A" in k)  # A trained again

    monkeypatch.delenv(wire.ENV_SOCKET, raising=False)
    monkeypatch.setattr(task, "_warm_model", None)
    cold = unpacked(node_runtime.run_job(*lora))
    assert all(torch.equal(cold[k], after_lora[k]) for k in cold)  # nothing of the ffa job stayed in the model


def test_a_relaunched_task_attaches_to_the_running_job_and_it_trains_once(
    home, start_worker, tmp_path, tiny_checkpoint, tiny_corpus
):
    worker = start_worker()
    message, context = job(tiny_checkpoint, tiny_corpus / "node-1", 3, TrainConfig(**{**vars(CFG), "local_steps": 40}))
    first = run_shim(home, tmp_path, message, context, "first")
    wait_for(lambda: worker.status()["running"], 300, "the first job to start")
    # Flower missed the task's heartbeat and launched a second flwr-clientapp for the same message.
    second = run_shim(home, tmp_path, message, context, "second")
    for shim in (first, second):
        out, _ = shim.communicate(timeout=600)
        assert shim.returncode == 0, out
    assert worker.status()["jobs"] == {"run": 1, "attached": 1, "cancelled": 0, "refused": 0, "failed": 0}
    one, two = reply_state((tmp_path / "first.out").read_bytes()), reply_state((tmp_path / "second.out").read_bytes())
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_a_worker_shared_by_two_nodes_trains_each_on_its_own_data(
    home, start_worker, tmp_path, tiny_checkpoint, tiny_corpus, monkeypatch
):
    worker = start_worker()  # one worker; two nodes' shims point at its socket (join --warm-worker)
    one = job(tiny_checkpoint, tiny_corpus / "node-1", 1, node_id=11)
    two = job(tiny_checkpoint, tiny_corpus / "node-2", 1, node_id=12)
    assert one[0].metadata.message_id != two[0].metadata.message_id
    shims = [run_shim(home, tmp_path, *one, "one"), run_shim(home, tmp_path, *two, "two")]  # arrive together
    for shim in shims:
        out, _ = shim.communicate(timeout=600)
        assert shim.returncode == 0, out
    assert worker.status()["jobs"]["run"] == 2 and worker.status()["jobs"]["attached"] == 0

    # node-2's reply is what node-2 alone would send: nothing of node-1's job (data, weights) leaked into it.
    monkeypatch.delenv(wire.ENV_SOCKET, raising=False)
    monkeypatch.setattr(task, "_warm_model", None)
    alone = unpacked(node_runtime.run_job(*two))
    shared_one, shared_two = (
        reply_state((tmp_path / "one.out").read_bytes()),
        reply_state((tmp_path / "two.out").read_bytes()),
    )
    assert all(torch.equal(alone[k], shared_two[k]) for k in alone)
    assert not all(torch.equal(shared_one[k], shared_two[k]) for k in alone)  # different data, different update


def test_a_full_queue_refuses_a_job_with_its_reason_and_keeps_the_waiting_ones(home):
    worker = Worker(home, max_waiting=1)

    def header(n: int) -> wire.JobHeader:
        return wire.JobHeader(message_id=f"m{n}", federation=worker.version, code=worker.code, launched_at=0.0)

    first, attached = worker._enlist(header(1), b"", b"")
    assert not attached and first.state == "queued"
    refused, _ = worker._enlist(header(2), b"", b"")
    assert refused.done.is_set() and not refused.ok
    assert refused.reason == "warm worker busy: 1 jobs already wait (--max-waiting)"
    assert [j.header.message_id for j in worker.queue] == ["m1"]


def test_a_job_whose_tasks_are_gone_is_cancelled_between_steps(
    home, start_worker, tmp_path, tiny_checkpoint, tiny_corpus
):
    worker = start_worker(grace=1.0)
    long = TrainConfig(**{**vars(CFG), "local_steps": 100_000})
    message, context = job(tiny_checkpoint, tiny_corpus / "node-1", 4, long)
    shim = run_shim(home, tmp_path, message, context, "gone")
    wait_for(lambda: worker.status()["running"], 300, "the job to start")
    time.sleep(3)  # inside the training loop by now
    shim.kill()
    shim.wait()
    wait_for(lambda: worker.status()["jobs"]["cancelled"] == 1, 60, "the orphaned job to be cancelled")
    assert worker.proc.poll() is None  # the worker lives on for the next round
    assert "cancelled: no task waited for it" in worker.log.read_text()


def test_a_dead_or_absent_worker_gives_an_error_reply_not_a_hang(
    home, start_worker, tmp_path, tiny_checkpoint, tiny_corpus
):
    message, context = job(
        tiny_checkpoint, tiny_corpus / "node-1", 5, TrainConfig(**{**vars(CFG), "local_steps": 100_000})
    )
    absent = run_shim(home, tmp_path, message, context, "absent", {wire.ENV_CONNECT_WAIT: "1"})
    out, _ = absent.communicate(timeout=120)
    assert absent.returncode == 3 and "ERROR warm worker unavailable: nothing answers on" in out

    worker = start_worker()
    shim = run_shim(home, tmp_path, message, context, "dying")
    wait_for(lambda: worker.status()["running"], 300, "the job to start")
    worker.proc.send_signal(signal.SIGKILL)
    out, _ = shim.communicate(timeout=60)
    assert shim.returncode == 3
    assert "ERROR warm worker unavailable: the worker closed the connection before replying" in out


def test_a_shim_with_other_code_is_refused_and_the_stale_worker_exits_for_a_restart(
    home, start_worker, tiny_checkpoint, tiny_corpus, monkeypatch
):
    worker = start_worker()
    message, context = job(tiny_checkpoint, tiny_corpus / "node-1", 6)
    monkeypatch.setattr(wire, "code_fingerprint", lambda: "0" * 64)  # this shim's code is not the worker's
    with pytest.raises(wire.WarmJobFailed, match="the node's code changed since its warm worker started"):
        wire.submit(wire.socket_path(home), message, context)
    assert worker.proc.wait(60) == EXIT_STALE
    assert worker.status()["jobs"]["refused"] == 1 and worker.status()["jobs"]["run"] == 0


def test_the_worker_refuses_to_steal_a_live_socket(home, start_worker):
    start_worker()
    result = subprocess.run([sys.executable, "-m", "federation.warm_worker", "--home", str(home)],
                            env=procs.flower_env(home / "flwr-home"), capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode != 0 and "another worker already answers" in result.stderr
