"""Benchmark: bytes each node sends and receives per round vs the adapter's tensor bytes (`make bench-communication`).

Real Flower processes, deployed as the product deploys them: one SuperLink with TLS (federation/pki.py's local CA) and
node authentication (each node's EC key registered through the Control API, as enrollment does), `--nodes`
SuperNodes (default 2) on the real SmolLM2-135M base model, the real ServerApp/ClientApp, runs submitted through the
Control API. No web site: the ServerApp journals each round to events.jsonl in its output dir and this script reads
that journal.

On the wire: each SuperNode's `--superlink` points at its own byte-counting TCP relay in this process, which forwards
to the SuperLink untouched. TLS passes through the relay, so what it counts is everything the node's Fleet API client
puts on TCP (TLS handshakes and records, HTTP, protobuf, chunked object transfers), minus only IP/TCP headers. Each
chunk is timestamped; a round's bytes are those between the ServerApp sending the round's instructions and the last
reply coming in (its journal's `sent` and `replies` timings). First the nodes sit connected with no run for `--idle`
seconds (polling and heartbeats): that idle rate times the round's duration is subtracted to give the net figures (raw
ones are reported too).

From Flower: the ClientApp reports `bytes-down`/`bytes-up` (ArrayRecord.count_bytes() of what it received and sent),
journalled per node per round. Adapter tensor bytes: sum of numel x element size over the round's saved adapter
(output-dir/round-N/adapter_model.safetensors), shown beside that file's size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import torch
from flwr.proto.control_pb2 import RegisterNodeRequest
from safetensors import safe_open

from bench import REPO
from bench.flower_cluster import server_side
from bench.report import Timer, write_section
from federation import control, pki, procs
from federation.artifacts import ADAPTER_WEIGHTS, round_folder
from federation.basemodel import prepare_smollm2
from federation.config import ServerConfig, TrainConfig, WireConfig
from federation.corpus import build_demo_corpus

HOST = "127.0.0.1"
SLACK_S = 0.5  # around a round's window: the relay and the ServerApp read the same clock, the records are ms apart
MB = 1e6
# label -> (LoRA r, target modules, transfer dtype). The first is the product's default adapter and setting.
ADAPTERS = {
    "r8-attn": (8, "q_proj,k_proj,v_proj,o_proj", "float32"),
    "r8-attn-fp16": (8, "q_proj,k_proj,v_proj,o_proj", "float16"),
    "r16-all": (16, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "float32"),
}
TARGETS = {"float32": 1.05, "float16": 0.55}  # wire / fp32 tensor bytes, up and down, from round 2


# ---------------------------------------------------------------- the relay


@dataclass
class Traffic:
    """What one node's relay saw: (time, bytes) per chunk each way, and when each TCP connection opened."""

    up: list[tuple[float, int]] = field(default_factory=list)  # node -> SuperLink
    down: list[tuple[float, int]] = field(default_factory=list)  # SuperLink -> node
    connections: list[float] = field(default_factory=list)

    def between(self, start: float, end: float) -> tuple[int, int, int]:
        """(bytes up, bytes down, connections opened) in (start, end]."""
        up = sum(n for t, n in list(self.up) if start < t <= end)
        down = sum(n for t, n in list(self.down) if start < t <= end)
        return up, down, sum(1 for t in list(self.connections) if start < t <= end)


class Relays:
    """One listening port per node, all forwarding to the SuperLink; an asyncio loop in a background thread."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.traffic: dict[str, Traffic] = {}
        self.servers: list[asyncio.Server] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="relays", daemon=True)
        self.thread.start()

    def add(self, name: str) -> int:
        traffic = self.traffic[name] = Traffic()
        start = asyncio.start_server(partial(self._connection, traffic), HOST, 0)
        server = asyncio.run_coroutine_threadsafe(start, self.loop).result(10)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def _connection(self, traffic: Traffic, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        traffic.connections.append(time.time())
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer, traffic.up), self._pipe(up_reader, writer, traffic.down))
        for w in (writer, up_writer):
            w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: list[tuple[float, int]]) -> None:
        try:
            while data := await reader.read(1 << 16):
                log.append((time.time(), len(data)))
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()  # half-close: the other direction may still be sending
        except (ConnectionError, OSError):
            writer.close()

    def close(self) -> None:
        async def shutdown() -> None:
            for server in self.servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()

    def __enter__(self) -> Relays:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- the cluster


@dataclass
class Nodes:
    """The SuperLink and the SuperNodes, each node behind its relay.

    With flwr 1.42 on a busy host, the SuperLink's SQLite can stay locked past its 5 s busy timeout; the HTTP 500 that
    follows ends the SuperNode's polling loop (the process lives on, logging one ERROR) or the SuperLink's superexec
    (a Traceback; later runs stay pending). Liveness is therefore read from the logs, and a failed run restarts all.
    """

    sup: procs.Supervisor
    relays: Relays
    root: Path
    commands: dict[str, tuple[list[str], Path]] = field(default_factory=dict)
    log_offsets: dict[str, int] = field(default_factory=dict)
    keys: dict[str, tuple[control.ControlHttpClient, bytes]] = field(default_factory=dict)

    def start_superlink(self) -> dict[str, Path]:
        """TLS and node authentication, as platform/stack/runner.py starts it; same port on restart (state in RAM)."""
        tls = pki.ensure_superlink_tls(self.root / "tls", [HOST, "localhost"])
        link_dir = self.root / "superlink"
        link_dir.mkdir(parents=True, exist_ok=True)
        command = procs.superlink_command(link_dir, HOST, self.relays.upstream_port, tls)
        self.commands["superlink"] = (command, link_dir)
        proc = self._start("superlink")
        procs.wait_http(f"https://{HOST}:{self.relays.upstream_port}/health", 60, proc, verify=str(tls["ca"]))
        return tls

    def add(self, client: control.ControlHttpClient, tls: dict[str, Path], root: Path, name: str, config: dict) -> None:
        """Register the node's key (what enrollment does), then run its SuperNode through its own relay."""
        home = root / "nodes" / name
        key, public_pem = pki.ensure_node_key(home)
        client.RegisterNode(RegisterNodeRequest(public_key=public_pem, name=name))
        self.keys[name] = (client, public_pem)  # the SuperLink's state is in memory: registered again on restart
        relay_port = self.relays.add(name)
        command = procs.supernode_command(f"{HOST}:{relay_port}", procs.free_port(), config, tls["ca"], key)
        self.commands[name] = (command, home)
        self._start(name)

    def _start(self, name: str) -> subprocess.Popen:
        command, home = self.commands[name]
        log = self.sup.log_dir / f"{name}.log"
        self.log_offsets[name] = log.stat().st_size if log.exists() else 0
        return self.sup.start(name, command, env=procs.flower_env(home / "flwr-home"), cwd=home)

    def restart(self) -> None:
        self.sup.stop_all()
        self.start_superlink()
        for name, (client, public_pem) in self.keys.items():
            client.RegisterNode(RegisterNodeRequest(public_key=public_pem, name=name))
        for name in self.commands:
            if name != "superlink":
                self._start(name)
        self.wait_connected()

    def broken(self) -> list[str]:
        """Processes that logged a fatal error since they (re)started."""
        self.sup.check()
        found = []
        for name, offset in self.log_offsets.items():
            with (self.sup.log_dir / f"{name}.log").open("rb") as fh:
                fh.seek(offset)
                if (b"Traceback" if name == "superlink" else b"ERROR") in fh.read():
                    found.append(name)
        return found

    def wait_connected(self, timeout: float = 120) -> None:
        """Until every node has talked to the SuperLink both ways since now (activated and polling)."""
        since, deadline = time.time(), time.monotonic() + timeout
        while not all(min(t.between(since, time.time())[:2]) > 0 for t in self.traffic):
            self.sup.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes not connected after {timeout:.0f}s")
            time.sleep(0.5)
        time.sleep(5)  # let activation and the first polls finish

    @property
    def traffic(self) -> list[Traffic]:
        return list(self.relays.traffic.values())


@dataclass
class Idle:
    seconds: float
    up_per_s: dict[str, float]
    down_per_s: dict[str, float]
    connections: dict[str, int]


def measure_idle(nodes: Nodes, seconds: float, attempts: int) -> Idle:
    """Traffic of connected nodes with no run; measured again if a node broke meanwhile."""
    for _ in range(attempts):
        start = time.time()
        time.sleep(seconds)
        end = time.time()
        if not (broken := nodes.broken()):
            break
        print(f"    {', '.join(broken)} logged an error while idle: restarting, measuring again", flush=True)
        nodes.restart()
    else:
        raise RuntimeError(f"nodes kept failing while idle: {broken}")
    spans = {name: t.between(start, end) for name, t in nodes.relays.traffic.items()}
    return Idle(
        end - start,
        {n: s[0] / (end - start) for n, s in spans.items()},
        {n: s[1] / (end - start) for n, s in spans.items()},
        {n: s[2] for n, s in spans.items()},
    )


class RunFailed(RuntimeError):
    pass


def submit(client: control.ControlHttpClient, run_config: dict, nodes: Nodes, timeout: float) -> float:
    """Run to completion; returns its wall seconds."""
    started = time.monotonic()
    try:
        run_id = control.start_run(client, server_side(run_config))
    except httpx.HTTPStatusError as err:
        raise RunFailed(f"StartRun answered {err.response.status_code}") from err
    while True:
        time.sleep(3)  # ListRuns writes to the SuperLink's SQLite: poll gently
        try:
            state = control.run_state(client, run_id)
        except httpx.HTTPStatusError as err:  # "database is locked" under load: ask again
            print(f"    run {run_id}: {err.response.status_code} from ListRuns, retrying", flush=True)
            continue
        if state.finished:
            break
        broken = nodes.broken()
        if broken or time.monotonic() - started > timeout:
            with contextlib.suppress(httpx.HTTPStatusError):  # 412: it has finished (failed) meanwhile
                control.stop_run(client, run_id)
            why = f"{', '.join(broken)} logged an error" if broken else f"still {state.status} after {timeout:.0f}s"
            raise RunFailed(f"run {run_id} stopped: {why}")
    if not state.succeeded:
        raise RunFailed(f"run {run_id} ended {state.sub_status}: {state.details}")
    return time.monotonic() - started


def run_adapter(
    client: control.ControlHttpClient, nodes: Nodes, run_config: dict, run_dir: Path, args: argparse.Namespace
) -> tuple[Path, float, list[str]]:
    """Submit until one run completes (on a busy host the SuperLink's SQLite can fail a run or knock a node out);
    returns its output dir, its seconds and why earlier attempts failed."""
    failures: list[str] = []
    for attempt in range(1, args.attempts + 1):
        out = run_dir / f"attempt-{attempt}"
        try:
            return out, submit(client, {**run_config, "output-dir": str(out)}, nodes, args.timeout), failures
        except RunFailed as err:
            failures.append(f"{err} (SuperLink log: {locked_count(nodes.sup)} 'database is locked' so far)")
            print(f"    attempt {attempt} failed: {failures[-1]}; restarting SuperLink and nodes", flush=True)
            nodes.restart()
    raise RuntimeError(f"{run_dir.name}: no run completed in {args.attempts} attempts: {failures}")


def locked_count(sup: procs.Supervisor) -> int:
    log = sup.log_dir / "superlink.log"
    return log.read_text(errors="replace").count("database is locked") if log.exists() else 0


# ---------------------------------------------------------------- measurements


@dataclass
class Adapter:
    label: str
    tensors: int
    params: int
    tensor_bytes: int
    file_bytes: int
    initial_distinct_bytes: int  # round-0 adapter, counting identical tensors once


def tensor_bytes(path: Path) -> tuple[int, int, int, int]:
    """(tensors, parameters, bytes, bytes of distinct tensors) of a safetensors file."""
    tensors = params = nbytes = 0
    distinct: dict[str, int] = {}
    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
            t = fh.get_tensor(key).contiguous()
            size = t.numel() * t.element_size()
            tensors, params, nbytes = tensors + 1, params + t.numel(), nbytes + size
            distinct[hashlib.sha256(t.view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()] = size
    return tensors, params, nbytes, sum(distinct.values())


def adapter_size(label: str, run_dir: Path) -> Adapter:
    path = round_folder(run_dir, 1) / ADAPTER_WEIGHTS
    tensors, params, nbytes, _ = tensor_bytes(path)
    distinct = tensor_bytes(round_folder(run_dir, 0) / ADAPTER_WEIGHTS)[3]
    return Adapter(label, tensors, params, nbytes, path.stat().st_size, distinct)


@dataclass
class Row:
    adapter: str
    round: int
    node: str
    seconds: float
    wire_up: int
    wire_down: int
    net_up: float
    net_down: float
    flower_up: int
    flower_down: int
    tensor_bytes: int
    connections: int


def round_rows(label: str, out: Path, relays: Relays, idle: Idle, adapter: Adapter) -> list[Row]:
    """One row per node per round: wire bytes between the journal's round events, Flower's counts from the journal."""
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    rounds = sorted((e for e in events if e["type"] == "round" and e["round"] > 0), key=lambda e: e["round"])
    rows = []
    for this in rounds:
        # From the instructions going out to the last reply in. Not between journal entries: a round is journalled
        # after its evaluation, which overlaps the next round, so the next instructions' download would be counted in
        # this round. The next round's instructions go out only after this round's replies are merged.
        start, end = this["timings"]["sent"] - SLACK_S, this["timings"]["replies"] + SLACK_S
        seconds = end - start
        reports = {n["name"]: n for n in this["nodes"]}
        for name, traffic in relays.traffic.items():
            up, down, conns = traffic.between(start, end)
            metrics = reports.get(name, {}).get("metrics", {})
            rows.append(
                Row(
                    label, this["round"], name, seconds, up, down,
                    up - idle.up_per_s[name] * seconds, down - idle.down_per_s[name] * seconds,
                    int(metrics.get("bytes-up") or 0), int(metrics.get("bytes-down") or 0),
                    adapter.tensor_bytes, conns,
                )
            )  # fmt: skip
    return rows


# ---------------------------------------------------------------- report


def per_round_table(rows: list[Row]) -> str:
    lines = [
        "| adapter | round | node | round s | wire up MB (net) | wire down MB (net) | Flower up MB | Flower down MB "
        "| wire/tensor up | wire/tensor down | Flower/tensor up | Flower/tensor down | TCP conns |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r.tensor_bytes
        lines.append(
            f"| {r.adapter} | {r.round} | {r.node} | {r.seconds:.0f} | {r.wire_up / MB:.3f} ({r.net_up / MB:.3f}) "
            f"| {r.wire_down / MB:.3f} ({r.net_down / MB:.3f}) | {r.flower_up / MB:.3f} | {r.flower_down / MB:.3f} "
            f"| {r.net_up / t:.3f} | {r.net_down / t:.3f} | {r.flower_up / t:.4f} | {r.flower_down / t:.4f} "
            f"| {r.connections} |"
        )
    return "\n".join(lines)


def adapter_table(adapters: list[Adapter]) -> str:
    lines = [
        "| adapter | LoRA r | target modules | on the wire as | tensors | parameters | fp32 tensor bytes (MB) "
        "| safetensors file (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in adapters:
        r, modules, dtype = ADAPTERS[a.label]
        lines.append(
            f"| {a.label} | {r} | {modules} | one packed {dtype} array | {a.tensors} | {a.params:,} "
            f"| {a.tensor_bytes / MB:.3f} | {a.file_bytes / MB:.3f} |"
        )
    return "\n".join(lines)


def idle_table(idle: Idle) -> str:
    lines = ["| node | idle up KB/min | idle down KB/min | TCP conns opened |", "|---|---|---|---|"]
    for name in idle.up_per_s:
        lines.append(
            f"| {name} | {idle.up_per_s[name] * 60 / 1e3:.1f} | {idle.down_per_s[name] * 60 / 1e3:.1f} "
            f"| {idle.connections[name]} |"
        )
    return "\n".join(lines)


def findings(rows: list[Row], idle: Idle, adapters: list[Adapter]) -> str:
    """Sentences computed from the numbers above."""
    parts = []
    for a in adapters:
        mine = [r for r in rows if r.adapter == a.label]
        later = [r for r in mine if r.round > 1] or mine
        up = statistics.mean(r.net_up / a.tensor_bytes for r in later)
        down = statistics.mean(r.net_down / a.tensor_bytes for r in later)
        first_down = statistics.mean(r.net_down for r in mine if r.round == 1)
        flower = statistics.mean(r.flower_up / a.tensor_bytes for r in mine)
        per_node_round = statistics.mean(r.net_up + r.net_down for r in later)
        per_tensor_up = statistics.mean(r.net_up - a.tensor_bytes for r in later) / a.tensors
        per_tensor_down = statistics.mean(r.net_down - a.tensor_bytes for r in later) / a.tensors
        dtype = ADAPTERS[a.label][2]
        target = TARGETS[dtype]
        verdict = "meets" if max(up, down) <= target else "misses"
        parts.append(
            f"**{a.label}** ({a.tensor_bytes / MB:.2f} MB of fp32 tensors in {a.tensors} tensors, sent as one packed "
            f"{dtype} array): from round 2 on, a node sends {up:.3f}x and receives {down:.3f}x the adapter's fp32 "
            f"tensor bytes on the wire (net of idle traffic; {verdict} the target of {target}x): "
            f"{per_tensor_up / 1e3:.2f} KB up and {per_tensor_down / 1e3:.2f} KB down per tensor beyond the fp32 "
            f"data (TLS, HTTP, protobuf, signed node-auth headers, the layout record; negative: half precision); "
            f"Flower's own count is {flower:.4f}x. In round 1 a node downloads {first_down / MB:.2f} MB against "
            f"{a.initial_distinct_bytes / MB:.2f} MB of distinct tensors in the initial adapter "
            f"({a.tensor_bytes / MB:.2f} MB counting identical ones each time). A round with 1000 such nodes "
            f"would move about "
            f"{per_node_round * 1000 / 1e9:.2f} GB through the SuperLink ({per_node_round / MB:.2f} MB per node)."
        )
    full = [a for a in adapters if ADAPTERS[a.label][2] == "float32"]
    if len(full) > 1:
        ratios = [
            statistics.mean(r.net_up / a.tensor_bytes for r in rows if r.adapter == a.label and r.round > 1)
            for a in full
        ]
        parts.append(
            f"Across adapter sizes {' and '.join(f'{a.tensor_bytes / MB:.1f} MB' for a in full)} (float32 on the "
            "wire) the upload "
            f"ratio is {' vs '.join(f'{x:.3f}' for x in ratios)}: "
            + (
                "the overhead is a near-constant fraction of the adapter."
                if max(ratios) - min(ratios) < 0.02
                else "the overhead is not a constant fraction; compare the per-tensor overheads above."
            )
        )
    idle_min = statistics.mean((idle.up_per_s[n] + idle.down_per_s[n]) * 60 for n in idle.up_per_s)
    parts.append(
        f"Idle, a connected node exchanges {idle_min / 1e3:.1f} KB per minute with the SuperLink (polling and "
        f"heartbeats, {statistics.mean(idle.connections.values()) / idle.seconds * 60:.1f} new TCP connections per "
        f"minute): {idle_min * 60 * 24 / MB:.1f} MB per node per day, {idle_min * 1000 / MB:.1f} MB per minute "
        f"for 1000 idle nodes."
    )
    return "\n\n".join(parts)


def body(
    rows: list[Row], idle: Idle, adapters: list[Adapter], nodes: int, train: TrainConfig, failures: list[str]
) -> str:
    retried = (
        f"Runs that failed and were resubmitted ({len(failures)}; the figures are from the completed run): "
        + "; ".join(f"`{f[:200]}`" for f in failures)
        if failures
        else "Every run completed on its first submission."
    )
    return "\n\n".join(
        [
            f"{nodes} real SuperNodes on SmolLM2-135M, one SuperLink with TLS and node authentication (registered "
            f"EC keys), 2 rounds of FedAvg per adapter. Each node reaches the SuperLink through its own byte-counting "
            f"TCP relay that passes TLS through untouched: wire bytes are TCP payload (TLS handshakes and records, "
            f"HTTP, protobuf), without IP/TCP headers (about +3.6% more on Ethernet at 52 B per 1448 B segment). "
            f"A round is the span from the ServerApp sending its instructions to the last reply coming in (the "
            f"journal's `sent` and `replies` timings, ±{SLACK_S} s). Net = raw minus the idle rate (measured for "
            f"{idle.seconds:.0f} s with nodes connected and no run) times the round's duration. "
            f"Flower = ArrayRecord.count_bytes() of what the "
            f"ClientApp received (down) and sent (up). Training is minimal (local-steps {train.local_steps}, "
            f"seq-len {train.seq_len}, batch {train.batch_size}): bytes do not depend on it. MB = 10^6 bytes.",
            adapter_table(adapters),
            per_round_table(rows),
            idle_table(idle),
            "What this shows:\n\n" + findings(rows, idle, adapters),
            retried,
        ]
    )


# ---------------------------------------------------------------- main


def ensure_model() -> Path:
    """The product's base model, prepared and cached where `make demo` keeps it."""
    path = REPO / "var" / "models" / "smollm2-135m-instruct"
    prepare_smollm2(path, REPO / "var" / "cache", progress=lambda m: print(f"  {m}", flush=True))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "var" / "bench" / "communication"))
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle", type=float, default=60, help="seconds of idle traffic to measure before the runs")
    parser.add_argument("--adapters", nargs="+", choices=list(ADAPTERS), default=list(ADAPTERS))
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run")
    parser.add_argument("--attempts", type=int, default=3, help="submissions per adapter before giving up")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the Flower processes on `kill` / timeout too
    timer = Timer()

    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    print("base model", flush=True)
    model = ensure_model()
    names = [f"node-{k + 1}" for k in range(args.nodes)]
    corpus = out / "corpus"
    build_demo_corpus(corpus, n_contributors=args.nodes, max_chunks_per_node=8, max_heldout=4)

    rows: list[Row] = []
    adapters: list[Adapter] = []
    failures: list[str] = []
    train = TrainConfig()
    port = procs.free_port()
    with ExitStack() as stack:
        relays = stack.enter_context(Relays(port))
        sup = stack.enter_context(procs.Supervisor(out / "logs"))  # stops the processes before the relays close
        print(f"starting SuperLink (TLS, node auth) and {args.nodes} nodes behind relays", flush=True)
        nodes = Nodes(sup, relays, out)
        tls = nodes.start_superlink()
        client = control.client(f"{HOST}:{port}", str(tls["ca"]))
        for name in names:
            nodes.add(client, tls, out, name, {"data-path": str(corpus / name), "name": name, "model-path": str(model)})
        nodes.wait_connected()
        print(f"measuring idle traffic for {args.idle:.0f}s", flush=True)
        idle = measure_idle(nodes, args.idle, args.attempts)
        for label in args.adapters:
            r, modules, dtype = ADAPTERS[label]
            train = TrainConfig(
                lora_r=r, lora_alpha=2 * r, target_modules=modules, local_steps=1, seq_len=32, batch_size=1,
                threads=1, max_eval_records=2,
            )  # fmt: skip
            server = ServerConfig(
                num_rounds=args.rounds, min_nodes=args.nodes, max_heldout_records=4, round_timeout=args.timeout,
            )  # fmt: skip
            run_config = {**train.to_run_config(), **server.to_run_config(),
                          **WireConfig(transfer_dtype=dtype).to_run_config(), "base-model-path": str(model),
                          "heldout-path": str(corpus / "heldout.jsonl")}  # fmt: skip
            run_dir, seconds, failed = run_adapter(client, nodes, run_config, out / "runs" / label, args)
            failures += [f"{label}: {f}" for f in failed]
            adapter = adapter_size(label, run_dir)
            adapters.append(adapter)
            rows += round_rows(label, run_dir, relays, idle, adapter)
            print(f"  {label}: {adapter.tensor_bytes / MB:.3f} MB adapter, run took {seconds:.0f}s", flush=True)

    text = body(rows, idle, adapters, args.nodes, train, failures)
    print()
    write_section("communication", "Communication per node per round", text, "make bench-communication", timer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
