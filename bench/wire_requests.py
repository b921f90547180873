"""Measure: HTTP requests and bytes each node puts on the wire per round, per transfer dtype.

Real Flower processes: one insecure SuperLink, `--nodes` real `python -m federation node` SuperNodes, the real
ServerApp/ClientApp, runs submitted through the Control API. Each node dials its own relay in this process, which
forwards to the SuperLink untouched and, the traffic being plain HTTP/1.1 (--insecure), parses the node's requests
(request line and Content-Length) to count them by Fleet API path. Every Array, and every 5 MiB chunk of one, is a
`push-object` (node -> SuperLink, the reply) or `pull-object` (SuperLink -> node, the instruction) request of its
own, so those two counts per node per round are the requests per message on that hop.

`--repo` picks the code to measure (default: this checkout), e.g. a worktree of an older commit for "before".
It must come first on sys.path: the SuperLink, SuperNodes and app processes import `federation` from there too.
The model is the tiny random Llama (testbed/tiny.py) unless `--model` names a checkpoint.
Prints a table; writes nothing into docs/.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench import REPO as THIS_REPO

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repo", default=str(THIS_REPO))
parser.add_argument("--out", default="")
parser.add_argument("--model", default="", help="checkpoint directory; default: the tiny random Llama")
parser.add_argument("--nodes", type=int, default=2)
parser.add_argument("--rounds", type=int, default=2)
parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
parser.add_argument("--timeout", type=float, default=600)
ARGS = parser.parse_args()
REPO = Path(ARGS.repo).resolve()
HOST = "127.0.0.1"


@dataclass
class Seen:
    """One node's traffic: (time, Fleet API path, request bytes) per request, and (time, bytes) downstream."""

    requests: list[tuple[float, str, int]] = field(default_factory=list)
    down: list[tuple[float, int]] = field(default_factory=list)

    def window(self, start: float, end: float) -> tuple[Counter, int, int]:
        paths = Counter(p for t, p, _ in self.requests if start < t <= end)
        up = sum(n for t, _, n in self.requests if start < t <= end)
        down = sum(n for t, n in self.down if start < t <= end)
        return paths, up, down


class HttpParser:
    """Splits a client's HTTP/1.1 byte stream into requests (Content-Length bodies; Flower's client sends those)."""

    def __init__(self, seen: Seen) -> None:
        self.seen, self.buffer, self.body_left, self.current = seen, b"", 0, ("", 0)

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.body_left:
                take = min(self.body_left, len(self.buffer))
                self.buffer, self.body_left = self.buffer[take:], self.body_left - take
                if self.body_left:
                    return
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4 :]
            lines = head.split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            if "chunked" in headers.get("transfer-encoding", ""):
                raise RuntimeError("chunked request bodies are not counted by this relay")
            length = int(headers.get("content-length", "0"))
            path = lines[0].split(" ")[1] if " " in lines[0] else lines[0]
            self.seen.requests.append((time.time(), path.rsplit("/", 1)[-1], end + 4 + length))
            self.body_left = length


class Relays:
    """One port per node forwarding to the SuperLink; an asyncio loop in a background thread."""

    def __init__(self, upstream: int) -> None:
        self.upstream, self.seen = upstream, {}
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def add(self, name: str) -> int:
        seen = self.seen[name] = Seen()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(partial(self._connection, seen), HOST, 0), self.loop
        ).result(10)
        return int(server.sockets[0].getsockname()[1])

    async def _connection(self, seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream)
        parser = HttpParser(seen)

        async def pipe(src, dst, note) -> None:
            try:
                while data := await src.read(1 << 16):
                    note(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            dst.close()

        await asyncio.gather(
            pipe(reader, up_writer, parser.feed),
            pipe(up_reader, writer, lambda d: seen.down.append((time.time(), len(d)))),
        )


def main() -> int:
    # The code measured is whatever `--repo` holds, so it goes first on sys.path before anything imports `federation`
    # (procs.flower_env then hands the same checkout to every process it starts); hence these imports in here.
    sys.path.insert(0, str(REPO))
    import federation
    from bench.flower_cluster import journal, run_to_end
    from federation import config as fconfig
    from federation import procs
    from federation.artifacts import ADAPTER_WEIGHTS, round_folder
    from federation.corpus import build_demo_corpus
    from testbed.tiny import build_tiny_checkpoint

    assert Path(federation.__file__).resolve().is_relative_to(REPO), f"federation imported from {federation.__file__}"
    out = Path(ARGS.out or REPO / "var" / "bench" / "wire-requests").resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model = Path(ARGS.model) if ARGS.model else build_tiny_checkpoint(out / "tiny")
    corpus = out / "corpus"
    build_demo_corpus(corpus, n_contributors=ARGS.nodes, max_chunks_per_node=8, max_heldout=4)
    names = [f"node-{k + 1}" for k in range(ARGS.nodes)]
    has_wire = hasattr(fconfig, "WireConfig")
    rows = []
    port = procs.free_port()
    relays = Relays(port)
    with procs.Supervisor(out / "logs") as sup:
        link_dir = out / "superlink"
        link_dir.mkdir()
        proc = sup.start("superlink", procs.superlink_command(link_dir, HOST, port),
                         env=procs.flower_env(link_dir / "flwr-home"), cwd=link_dir)  # fmt: skip
        procs.wait_http(f"http://{HOST}:{port}/health", 60, proc)
        for name in names:
            home = out / "nodes" / name
            home.mkdir(parents=True)
            command = [sys.executable, "-m", "federation", "node", "--superlink", f"{HOST}:{relays.add(name)}",
                       "--data", str(corpus / name), "--name", name, "--model", str(model),
                       "--home", str(home / "flwr-home")]  # fmt: skip
            sup.start(name, command, env=procs.flower_env(home / "flwr-home"), cwd=home)
        time.sleep(10)  # nodes register and start polling
        train = fconfig.TrainConfig(local_steps=1, seq_len=32, batch_size=1, threads=1, max_eval_records=2)
        server = fconfig.ServerConfig(num_rounds=ARGS.rounds, min_nodes=ARGS.nodes, max_heldout_records=4)
        for dtype in ARGS.dtypes:
            if dtype != "float32" and not has_wire:
                print(f"{dtype}: this code has no transfer-dtype; skipped", flush=True)
                continue
            run_dir = out / "runs" / dtype
            config = {**train.to_run_config(), **server.to_run_config(), "base-model-path": str(model),
                      "heldout-path": str(corpus / "heldout.jsonl"), "output-dir": str(run_dir)}  # fmt: skip
            if has_wire:
                config["transfer-dtype"] = dtype
            started = time.time()
            seconds = run_to_end(f"{HOST}:{port}", config, dtype, ARGS.timeout)
            events = journal(run_dir)
            rounds = [e for e in events if e["type"] == "round" and e["round"] > 0]
            for name in names:
                paths, up, down = relays.seen[name].window(started, time.time())
                flower = [n["metrics"] for e in rounds for n in e["nodes"] if n["name"] == name]
                rows.append((dtype, name, len(rounds), paths, up, down, flower, seconds))
            print(f"{dtype}: run took {seconds:.0f}s", flush=True)
    print()
    print(f"code: {REPO} ({'packed' if has_wire else 'per-tensor'}); model: {model}")
    tensors = None
    adapter = round_folder(out / "runs" / ARGS.dtypes[0], 1) / ADAPTER_WEIGHTS
    if adapter.exists():
        from safetensors import safe_open

        with safe_open(str(adapter), framework="np") as f:
            tensors = len(list(f.keys()))
            elements = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        print(f"adapter: {tensors} tensors, {elements} elements = {4 * elements} float32 bytes")
    print(
        "| transfer | node | rounds | pull-object per round (down msg) | push-object per round (up msg) "
        "| all requests per round | wire bytes up / down per round | Flower bytes-up / bytes-down |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for dtype, name, n, paths, up, down, flower, _ in rows:
        n = max(n, 1)
        fu = sum(m.get("bytes-up", 0) for m in flower) / n
        fd = sum(m.get("bytes-down", 0) for m in flower) / n
        print(
            f"| {dtype} | {name} | {n} | {paths['pull-object'] / n:.1f} | {paths['push-object'] / n:.1f} "
            f"| {sum(paths.values()) / n:.1f} | {up / n:,.0f} / {down / n:,.0f} | {fu:,.0f} / {fd:,.0f} |"
        )
    print()
    for dtype, name, _, paths, *_ in rows:
        print(dtype, name, dict(sorted(paths.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
