"""Benchmark: one federated round with 10, 50 and 100 real SuperNodes on this machine (not a test; `make bench-scale`).

What runs, per size N (each size in a fresh child process, so Django, the SuperLink and the site start clean):

* the whole platform from bench/site_stack.py: TLS SuperLink with `--enable-supernode-auth`, web (uvicorn),
  Celery worker, embedded broker, its own SQLite database under var/bench/scale/nN/;
* N contributor nodes admitted through the product's enrollment path: an approved contributor, a one-time
  enrollment token, an EC key made on the node (federation.pki), `POST /api/v1/nodes/enroll` (join's own
  `enroll()`; the site's node_enroll registers the public key with the SuperLink through RegisterNode), then a
  real `flower-supernode` with TLS, `--auth-supernode-private-key` and the node config `join` gives it
  (data-path, name, model-path). `--join-nodes` of them (default 1) run the whole `python -m federation join`
  wrapper; the others start `flower-supernode` directly with the enrolled key, which is what join does inside,
  so N nodes cost 2N processes (SuperNode + its SuperExec) instead of 3N. The join wrapper's own memory is
  measured and reported, so the saving is a number, not a guess. Every node runs the node's own `flwr-clientapp`
  (federation.node_runtime: installed code only) and, with `--warm shared` (default), hands its job to one warm
  worker shared by all N nodes (`python -m federation.warm_worker`, `join --warm-worker`): torch and the model are
  loaded once for the host, each per-message ClientApp is a shim without torch, and the worker trains one job at a
  time in arrival order. `--warm off` runs every job cold in its own ClientApp process, as before issue 14;
* one campaign of 1 round with min_nodes = N through campaign_create + campaign_launch (the console's path:
  Celery submits the run through the Control API, the ServerApp reports rounds to the site over HTTP), on the
  tiny random Llama (testbed/tiny.py), 4 records per node, 1 local step, seq-len 32, 1 thread per app
  process: the round's cost is the platform's and Flower's, not training.

Timed: enrollment; first node started -> N nodes `online` in the SuperLink's ListNodes; launch -> run submitted
(Celery), -> round 1 in the database (Round with eval_loss), -> campaign completed (release published).

Memory: a sampler thread reads /proc every ~0.5 s: RSS (statm) of every process of ours, and PSS (smaps_rollup,
shared pages split between the processes sharing them, so PSS adds up) of the SuperLink tree (flower-superlink
+ flower-superexec + flwr-serverapp), the web and worker trees, the shared warm worker, each ClientApp process
(flwr-clientapp, one per message: federation.node_runtime) and, every few samples, each SuperNode
(flower-supernode + its flower-superexec). Peaks are reported, with the system's lowest MemAvailable.

Where it breaks: a guard thread reads MemAvailable every 0.2 s; below `--min-available-gib` it SIGKILLs every
node process at once (the bulk of the memory), then the size is wound down cleanly (campaign_cancel stops the
Flower run through the Control API, every process is stopped). A round whose replies were lost (a node logs
"Failed to send message" after the SuperLink answered HTTP 500) is ended at once: with min_nodes = N the ServerApp
would wait out its one-hour round timeout. Each size also has timeouts, and the sweep has a time budget. A size
that broke while its nodes were starting, or timed out, ends the sweep (a larger one cannot do better); one that
broke during the round does not (the next size shows whether standing nodes alone fit).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from report import REPO, Timer, write_section

VAR = REPO / "var" / "bench" / "scale"
MODEL_DIR = VAR / "model" / "tiny-llama"
MIB = 2**20
GIB = 2**30
PAGE = os.sysconf("SC_PAGE_SIZE")
CLIENTAPP = "flwr-clientapp"
TRAIN_CONFIG = {"local-steps": 1, "seq-len": 32, "batch-size": 2, "threads": 1, "max-eval-records": 2}
RECORDS_PER_NODE = 4
ERROR_LINE = re.compile(r"ERROR|Traceback|Killed|Exception:")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
SEND_FAILED = "Failed to send message"
RESTART_AFTER_S = 5.0  # join's default --retry-seconds
WARM_NAME = "node-shared-warm-worker"  # a "node-" name: stop_nodes stops it with the nodes
DB_LOCKED = "database is locked"


class Abort(Exception):
    """Ends one size early; the message says why (it becomes the size's outcome)."""


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


# ------------------------------------------------------------------------------------------------ /proc readers


def mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) of every process, from one pass over /proc/*/stat. A node's own `flwr-clientapp` is a
    script that execs `python -S -m federation.task_launcher` (the client that has the warm worker's task launcher
    fork the task) or, without a launcher, `python -m federation.node_runtime`: those count as CLIENTAPP too. The
    forked task processes live in the warm worker's tree (its launcher's children) and count there."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        left, right = data.index(b"("), data.rindex(b")")
        comm = data[left + 1 : right].decode(errors="replace")
        if comm.startswith("python") and _is_node_runtime(entry.name):
            comm = CLIENTAPP
        table[int(entry.name)] = (int(data[right + 2 :].split()[1]), comm)
    return table


def _is_node_runtime(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return False
    if b"federation.node_runtime" in argv:
        return True
    return b"federation.task_launcher" in argv and b"serve" not in argv  # the client, not the launcher


def children_map(table: dict[int, tuple[int, str]]) -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    return kids


def tree(root: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def rollup(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) in bytes from /proc/PID/smaps_rollup (the kernel sums the mappings)."""
    rss = pss = None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        return None
    return (rss, pss) if rss is not None and pss is not None else None


def pids_under(folder: Path, exclude: Iterable[int] = ()) -> list[int]:
    """Our processes whose working directory is inside `folder` (nodes, their SuperExecs and app processes)."""
    prefix, skip, found = str(folder.resolve()), set(exclude) | {os.getpid()}, []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
        except OSError:
            continue  # gone, or not ours
        if cwd == prefix or cwd.startswith(prefix + os.sep):
            found.append(int(entry.name))
    return found


def pids_with_env(name: str, value: str) -> list[int]:
    """Our processes started with NAME=VALUE in their environment (web, worker, broker of one size)."""
    needle, found = f"{name}={value}".encode(), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_all(pids: Iterable[int], sig: int = signal.SIGKILL) -> int:
    n = 0
    for pid in pids:
        try:
            os.kill(pid, sig)
            n += 1
        except ProcessLookupError:
            pass
    return n


# ------------------------------------------------------------------------------------------------ memory sampler


@dataclass
class Peak:
    rss: int = 0
    pss: int = 0

    def see(self, rss: int, pss: int | None) -> None:
        self.rss = max(self.rss, rss)
        if pss is not None:
            self.pss = max(self.pss, pss)


class Sampler(threading.Thread):
    """Peak RSS/PSS of the platform's process trees, each node, each ClientApp; lowest MemAvailable."""

    def __init__(self, interval: float, node_pss_every: int) -> None:
        super().__init__(name="memory-sampler", daemon=True)
        self.interval, self.node_pss_every = interval, node_pss_every
        self.infra: dict[str, int] = {}  # superlink / web / worker -> root pid
        self.nodes: dict[str, int] = {}  # node name -> root pid (the SuperNode, or its join wrapper)
        self.wrappers: set[int] = set()  # join processes (measured apart from the node they run)
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.groups: dict[str, Peak] = {}
        self.by_comm: dict[str, Peak] = {}  # inside the SuperLink tree
        self.node_peaks: dict[str, Peak] = {}
        self.clientapps: dict[int, Peak] = {}
        self.wrapper_peak = Peak()
        self.total = Peak()
        self.concurrent_clientapps = 0
        self.min_available = mem_available()
        self.ticks = 0
        self.cpu_s = 0.0

    def add_node(self, name: str, pid: int, wrapper: bool = False) -> None:
        with self.lock:
            self.nodes[name] = pid
            if wrapper:
                self.wrappers.add(pid)

    def run(self) -> None:
        while not self.done.wait(self.interval):
            started = time.thread_time()
            try:
                self.sample()
            except Exception as exc:  # a measurement glitch must not end the benchmark
                log(f"sampler: {exc!r}")
            self.cpu_s += time.thread_time() - started

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)

    def sample(self) -> None:
        self.ticks += 1
        self.min_available = min(self.min_available, mem_available())
        table = process_table()
        kids = children_map(table)
        with self.lock:
            infra, nodes, wrappers = dict(self.infra), dict(self.nodes), set(self.wrappers)
        node_pss = self.ticks % self.node_pss_every == 1
        total_rss, total_pss = 0, 0
        for group, root in infra.items():
            rss, pss = self._group(tree(root, kids), table, with_pss=True, comm_peaks=group == "superlink")
            self.groups.setdefault(group, Peak()).see(rss, pss)
            total_rss, total_pss = total_rss + rss, total_pss + (pss or 0)
        clientapps = 0
        for name, root in nodes.items():
            standing: list[int] = []
            for pid in tree(root, kids):
                comm = table.get(pid, (0, ""))[1]
                if comm == CLIENTAPP or pid in wrappers:
                    measured = self._one(pid, with_pss=True)
                    if measured is None:
                        continue
                    peak = self.clientapps.setdefault(pid, Peak()) if comm == CLIENTAPP else self.wrapper_peak
                    peak.see(*measured)
                    clientapps += comm == CLIENTAPP
                    total_rss, total_pss = total_rss + measured[0], total_pss + (measured[1] or 0)
                else:
                    standing.append(pid)
            rss, pss = self._group(standing, table, with_pss=node_pss)
            self.node_peaks.setdefault(name, Peak()).see(rss, pss)
            total_rss, total_pss = total_rss + rss, total_pss + (pss or 0)
        self.concurrent_clientapps = max(self.concurrent_clientapps, clientapps)
        self.total.see(total_rss, total_pss if node_pss or not nodes else None)

    def _one(self, pid: int, with_pss: bool) -> tuple[int, int | None] | None:
        if with_pss:
            return rollup(pid)
        rss = rss_bytes(pid)
        return None if rss is None else (rss, None)

    def _group(
        self, pids: list[int], table: dict[int, tuple[int, str]], with_pss: bool, comm_peaks: bool = False
    ) -> tuple[int, int | None]:
        rss_sum, pss_sum = 0, 0
        per_comm: dict[str, list[int]] = {}
        for pid in pids:
            measured = self._one(pid, with_pss)
            if measured is None:
                continue
            rss_sum += measured[0]
            pss_sum += measured[1] or 0
            if comm_peaks:
                comm = per_comm.setdefault(table.get(pid, (0, "?"))[1], [0, 0])
                comm[0], comm[1] = comm[0] + measured[0], comm[1] + (measured[1] or 0)
        for comm, (rss, pss) in per_comm.items():
            self.by_comm.setdefault(comm, Peak()).see(rss, pss)
        return rss_sum, (pss_sum if with_pss else None)

    def summary(self) -> dict[str, Any]:
        def mib(value: float) -> float:
            return round(value / MIB, 1)

        def spread(peaks: list[Peak]) -> dict[str, float | int]:
            if not peaks:
                return {"count": 0}
            pss = [p.pss for p in peaks if p.pss]
            return {
                "count": len(peaks),
                "rss_median": mib(statistics.median(p.rss for p in peaks)),
                "rss_max": mib(max(p.rss for p in peaks)),
                "pss_median": mib(statistics.median(pss)) if pss else None,
                "pss_max": mib(max(pss)) if pss else None,
            }

        return {
            "groups": {k: {"rss": mib(v.rss), "pss": mib(v.pss)} for k, v in self.groups.items()},
            "superlink_by_process": {k: {"rss": mib(v.rss), "pss": mib(v.pss)} for k, v in self.by_comm.items()},
            "node": spread(list(self.node_peaks.values())),
            "clientapp": spread(list(self.clientapps.values())) | {"concurrent_max": self.concurrent_clientapps},
            "join_wrapper": {"rss": mib(self.wrapper_peak.rss), "pss": mib(self.wrapper_peak.pss)},
            "total": {"rss": mib(self.total.rss), "pss": mib(self.total.pss)},
            "min_available_gib": round(self.min_available / GIB, 2),
            "sampler": {"ticks": self.ticks, "cpu_s": round(self.cpu_s, 1)},
        }


class MemoryGuard(threading.Thread):
    """Reads MemAvailable every 0.2 s; below the floor it kills every node process at once, then flags the size."""

    def __init__(self, floor: int, nodes_dir: Path) -> None:
        super().__init__(name="memory-guard", daemon=True)
        self.floor, self.nodes_dir = floor, nodes_dir
        self.done = threading.Event()
        self.tripped = ""

    def run(self) -> None:
        while not self.done.wait(0.2):
            available = mem_available()
            if available < self.floor:
                killed = kill_all(pids_under(self.nodes_dir))
                self.tripped = (
                    f"memory guard: MemAvailable {available / GIB:.2f} GiB < {self.floor / GIB:.1f} GiB; "
                    f"killed {killed} node processes"
                )
                log(self.tripped)
                return

    def check(self) -> None:
        if self.tripped:
            raise Abort(self.tripped)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)


class Yielder(threading.Thread):
    """Every second, makes every node process (SuperNodes, SuperExecs, ClientApps) yield the CPU to the platform.

    Contributors' nodes run on machines of their own; here N of them share two cores with the SuperLink, whose
    SQLite state then answers 'database is locked' when its writers are starved. A process's nice value is not
    enough: with the kernel's autogroup scheduling each session (every node and SuperExec starts one) gets an
    equal share whatever its processes' nice, so the session's autogroup nice is raised as well.

    The shared warm worker is left alone (`spare`): it is the one process that trains every node's job, and at
    nice 19 in an autogroup of its own it got 1/N of the CPU beside N SuperNodes' sessions (its start-up alone took
    264 s with 100 nodes polling, and every round waited for it).
    """

    def __init__(self, nice: int, nodes_dir: Path) -> None:
        super().__init__(name="yielder", daemon=True)
        self.nice, self.nodes_dir = nice, nodes_dir
        self.done = threading.Event()
        self.seen: set[int] = set()
        self.spare: set[int] = set()

    def run(self) -> None:
        while not self.done.wait(1.0):
            for pid in pids_under(self.nodes_dir):
                if pid in self.seen or pid in self.spare:
                    continue
                self.seen.add(pid)
                try:
                    os.setpriority(os.PRIO_PROCESS, pid, self.nice)
                    Path(f"/proc/{pid}/autogroup").write_text(str(self.nice))
                except OSError:
                    pass  # gone already, or no autogroup scheduling on this kernel

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)


# ------------------------------------------------------------------------------------------------ one size


@dataclass
class Result:
    n: int
    train: int = 0  # nodes drawn to train in the round (the campaign's nodes per round); n = every node
    all_train: bool = False  # the extra run of this size with every node training (--all-train-sizes)
    outcome: str = "not run"
    phase: str = ""  # where it was when it ended: start, enroll, nodes, online, round, done
    site_s: float | None = None
    enroll_s: float | None = None
    started_nodes: int = 0
    online_s: float | None = None
    online: int = 0
    submitted_s: float | None = None
    round0_s: float | None = None
    round1_s: float | None = None
    done_s: float | None = None
    server_round_s: float | None = None
    campaign_status: str = ""
    campaign_reason: str = ""
    release: bool = False
    participations: int = 0
    participants_ok: int = 0
    failures: int = 0
    dead_nodes: int = 0
    lost_replies: int = 0  # nodes whose reply the SuperLink refused ("Failed to send message" in their log)
    restarts: int = 0  # SuperNodes that exited and were started again (what `join` does for a contributor)
    db_locked: int = 0  # "database is locked" errors in the SuperLink's log
    teardown_s: float | None = None
    baseline_available_gib: float = 0.0
    memory: dict[str, Any] = field(default_factory=dict)
    log_errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    wall_s: float | None = None
    warm: str = "shared"  # shared: one warm worker for every node of the host; off: every job cold
    warm_jobs: dict[str, int] = field(default_factory=dict)  # the shared worker's own count (warm-worker.json)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def trains_all(self) -> bool:
        return not self.train or self.train >= self.n

    @property
    def name(self) -> str:
        """How the findings name this run: its size and how many of its nodes trained."""
        return f"N = {self.n} ({'all' if self.trains_all else self.train} training)"

    @property
    def label(self) -> str:
        """Its folder under var/bench/scale: the size, and "-all" for a size also run with every node training."""
        return f"n{self.n}-all" if self.all_train else f"n{self.n}"

    @property
    def completed(self) -> bool:
        """The round ran to the end and was recorded, with every update or with what came back in time."""
        return self.campaign_status == "completed"


@dataclass
class NodeSpec:
    name: str
    home: Path
    data: Path
    token: str = ""
    state: dict[str, Any] = field(default_factory=dict)
    key: Path | None = None
    join: bool = False


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM from the parent: the same clean wind-down as Ctrl-C


def run_size(plan: Result, args: argparse.Namespace, deadline: float) -> Result:
    """Everything for one N; always stops what it started. `deadline` is a time.time() value."""
    from site_stack import running_site

    n, result = plan.n, plan
    result.baseline_available_gib, result.phase = round(mem_available() / GIB, 2), "start"
    started = time.monotonic()
    try:
        with running_site(f"scale/{plan.label}") as site:
            result.site_s = round(time.monotonic() - started, 1)
            SizeRun(n, args, site, result, deadline).run()
    except KeyboardInterrupt:
        result.outcome = "interrupted"
    except Exception as exc:  # the site itself did not come up
        result.outcome = f"error: {type(exc).__name__}: {exc}"[:300]
    result.wall_s = round(time.monotonic() - started, 1)
    return result


class SizeRun:
    """One size on a running site: enroll and start N nodes, wait until online, one round, tear the nodes down."""

    def __init__(self, n: int, args: argparse.Namespace, site: Any, result: Result, deadline: float) -> None:
        self.n, self.args, self.site, self.result, self.deadline = n, args, site, result, deadline
        self.nodes_dir = site.stack.state_dir / "nodes"
        self.sampler = Sampler(args.sample_interval, args.node_pss_every)
        self.sampler.infra = {k: site.stack.supervisor.pid(k) for k in ("superlink", "web", "worker")}
        self.guard = MemoryGuard(int(args.min_available_gib * GIB), self.nodes_dir)
        self.yielder = Yielder(args.node_nice, self.nodes_dir)
        self.campaign: Any = None
        self.commands: dict[str, tuple[list[str], dict[str, str], Path]] = {}  # direct nodes, to restart them
        self.exited: dict[str, float] = {}  # node -> when it was found exited (restarted after RESTART_AFTER_S)
        self.warm_home: Path | None = None  # the shared warm worker's home, when --warm shared

    def run(self) -> None:
        self.guard.start()
        self.sampler.start()
        if self.args.node_nice:
            self.yielder.start()
        try:
            self.exercise()
        except Abort as exc:
            self.result.outcome = str(exc)
        except Exception as exc:  # anything else is recorded too, and everything still stopped
            self.result.outcome = f"error: {type(exc).__name__}: {exc}"[:300]
        finally:  # also on KeyboardInterrupt, which then goes on up
            torn = time.monotonic()
            self.cancel()
            self.result.warm_jobs = warm_counts(self.warm_home)
            self.result.dead_nodes = stop_nodes(self.site.stack.supervisor, self.nodes_dir)
            self.sampler.stop()
            self.guard.stop()
            if self.yielder.is_alive():
                self.yielder.stop()
            self.result.memory = self.sampler.summary()
            scan_logs(self.site.stack.state_dir, self.result)
            self.result.teardown_s = round(time.monotonic() - torn, 1)

    def exercise(self) -> None:
        from campaigns.services import base_model_register, campaign_create, campaign_launch
        from federation.corpus import build_demo_corpus
        from testbed.tiny import build_tiny_checkpoint

        n, result = self.n, self.result
        model = build_tiny_checkpoint(MODEL_DIR)
        base = base_model_register(path=model, name="tiny-llama", hf_id="bayanihan/tiny-random-llama")
        corpus = self.site.var / "corpus"
        build_demo_corpus(corpus, n_contributors=n, max_chunks_per_node=RECORDS_PER_NODE, max_heldout=8)

        result.phase = "enroll"
        nodes = self.enroll(corpus)
        result.phase = "nodes"
        warm = self.start_warm_worker(model) if self.args.warm == "shared" else None
        first = self.start_nodes(nodes, model, warm)
        result.phase = "online"
        self.wait_online(first, min(self.deadline, time.time() + self.args.online_timeout))
        self.check_alive("while the nodes came online")

        result.phase = "round"
        self.campaign = campaign_create(
            name=f"scale N={n}",
            base_model=base,
            data_task="python-docs",
            heldout_path=str(corpus / "heldout.jsonl"),
            train_config=TRAIN_CONFIG,
            num_rounds=1,
            min_nodes=n,
            nodes_per_round=0 if result.train >= n else result.train,
            round_timeout=int(self.args.campaign_round_timeout),
        )
        launched = time.monotonic()
        campaign_launch(campaign=self.campaign)
        log(
            f"N={n}: campaign #{self.campaign.pk} launched (1 round, min_nodes={n}, {result.train} drawn to train, "
            f"round timeout {self.args.campaign_round_timeout:.0f}s)"
        )
        self.follow(launched, min(self.deadline, time.time() + self.args.round_timeout))
        self.record_round()
        result.phase = "done"

    def enroll(self, corpus: Path) -> list[NodeSpec]:
        """Every node through the product's enrollment: approved contributor, one-time token, key made locally."""
        from community.services import enrollment_token_create
        from federation import pki
        from federation.cli.join import enroll
        from stack.local_nodes import local_contributor

        clock = time.monotonic()
        specs = []
        for k in range(1, self.n + 1):
            name = f"node-{k}"
            spec = NodeSpec(name, self.nodes_dir / name, corpus / name, join=k <= self.args.join_nodes)
            spec.token, _ = enrollment_token_create(contributor=local_contributor(name))
            if not spec.join:  # a join node makes its key and enrolls itself, over the same HTTP endpoint
                spec.home.mkdir(parents=True, exist_ok=True)
                spec.key, public_pem = pki.ensure_node_key(spec.home)
                spec.state = enroll(self.site.url, spec.token, public_pem, name, spec.home)
            specs.append(spec)
        self.result.enroll_s = round(time.monotonic() - clock, 1)
        direct = sum(1 for s in specs if not s.join)
        log(f"N={self.n}: {direct} nodes enrolled over HTTP in {self.result.enroll_s}s")
        return specs

    def start_warm_worker(self, model: Path) -> Path:
        """One warm worker for every node of this host (what `join --warm-worker` points at); returns its socket.
        It lives under the nodes' folder, so the memory guard kills it and stop_nodes stops it with the nodes; unlike
        them it keeps its normal priority (Yielder.spare)."""
        from federation import procs, warm_protocol

        home = self.nodes_dir / "shared-warm"
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        home.chmod(0o700)
        command = [sys.executable, "-m", "federation.warm_worker", "--home", str(home), "--model", str(model),
                   "--max-waiting", str(self.n + 16)]  # fmt: skip
        proc = self.site.stack.supervisor.start(WARM_NAME, command, env=procs.flower_env(home / "flwr-home"), cwd=home)
        self.sampler.infra["warm worker"] = proc.pid
        self.yielder.spare.add(proc.pid)
        try:  # in case the yielder saw it first
            os.setpriority(os.PRIO_PROCESS, proc.pid, 0)
            Path(f"/proc/{proc.pid}/autogroup").write_text("0")
        except OSError:
            pass
        socket = warm_protocol.socket_path(home)
        deadline = time.monotonic() + 120
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise Abort(f"the shared warm worker did not start (log: {home.parent.parent / 'logs'})")
            time.sleep(0.2)
        log(f"N={self.n}: shared warm worker {proc.pid} listening on {socket}")
        self.warm_home = home
        return socket

    def start_nodes(self, nodes: list[NodeSpec], model: Path, warm: Path | None = None) -> float:
        from federation import procs, warm_protocol

        supervisor, first, ports = self.site.stack.supervisor, time.monotonic(), set()
        for spec in nodes:
            self.guard.check()
            if spec.join:
                self.site.stack.start_join(spec.name, self.site.url, spec.token, spec.data, model, warm_socket=warm,
                                           env={procs.TASK_POLL_ENV: str(self.args.node_poll_seconds)})  # fmt: skip
                self.sampler.add_node(spec.name, supervisor.pid(f"node-{spec.name}"), wrapper=True)
            else:
                port = procs.free_port()
                while port in ports:
                    port = procs.free_port()
                ports.add(port)
                config = {"data-path": str(spec.data.resolve()), "name": spec.name, "model-path": str(model.resolve())}
                command = procs.supernode_command(spec.state["superlink"], port, config, spec.home / "ca.crt", spec.key)
                # The node's own flwr-clientapp first on PATH, as join sets it up (installed code only).
                env = procs.flower_env(spec.home / "flwr-home", node_bin=procs.node_runtime_bin(spec.home),
                                       task_poll_seconds=self.args.node_poll_seconds)  # fmt: skip
                if warm is not None:
                    env[warm_protocol.ENV_SOCKET] = str(warm)
                self.commands[spec.name] = (command, env, spec.home)
                proc = supervisor.start(f"node-{spec.name}", command, env=env, cwd=spec.home)
                self.sampler.add_node(spec.name, proc.pid)
            self.result.started_nodes += 1
        log(f"N={self.n}: {len(nodes)} node processes started in {time.monotonic() - first:.1f}s")
        return first

    def revive(self) -> None:
        """Start again a direct node whose SuperNode exited, RESTART_AFTER_S later: what `join` does for the one
        node it runs (e.g. after "Failed to activate SuperNode" when an activation timed out and was retried)."""
        supervisor = self.site.stack.supervisor
        for name in self.commands:
            code = supervisor.returncode(f"node-{name}")
            if code is None:
                continue
            found = self.exited.setdefault(name, time.monotonic())
            if time.monotonic() - found < RESTART_AFTER_S:
                continue
            self.guard.check()
            del self.exited[name]
            log(f"N={self.n}: {name} exited with code {code}; starting it again (as join would)")
            self.sampler.add_node(name, supervisor.restart(f"node-{name}").pid)
            self.result.restarts += 1

    def wait_online(self, first: float, deadline: float) -> None:
        last_report = time.monotonic()
        while True:
            self.guard.check()
            self.revive()
            try:
                self.result.online = online_count()
            except Exception as exc:  # a SuperLink busy with N connecting nodes may answer late: ask again
                log(f"N={self.n}: ListNodes failed ({type(exc).__name__}); asking again")
                time.sleep(1)
                continue
            if self.result.online >= self.n:
                self.result.online_s = round(time.monotonic() - first, 1)
                log(f"N={self.n}: all {self.n} nodes online after {self.result.online_s}s")
                return
            if time.time() > deadline:
                raise Abort(
                    f"timeout: {self.result.online}/{self.n} nodes online after {time.monotonic() - first:.0f}s"
                )
            if time.monotonic() - last_report > 15:
                log(f"N={self.n}: {self.result.online}/{self.n} online; MemAvailable {mem_available() / GIB:.1f} GiB")
                last_report = time.monotonic()
            time.sleep(1)

    def follow(self, launched: float, deadline: float) -> None:
        """Poll the database the way the console shows progress: submitted, round 0, round 1, terminal."""
        from campaigns.models import Round

        campaign, result, last_report, last_scan = self.campaign, self.result, time.monotonic(), 0.0
        while True:
            self.guard.check()
            campaign.refresh_from_db()
            now = round(time.monotonic() - launched, 1)
            if result.submitted_s is None and campaign.flwr_run_id:
                result.submitted_s = now
            rounds = set(
                Round.objects.filter(campaign=campaign).exclude(eval_loss=None).values_list("number", flat=True)
            )
            if result.round0_s is None and 0 in rounds:
                result.round0_s = now
            if result.round1_s is None and 1 in rounds:
                result.round1_s = now
                log(f"N={self.n}: round 1 recorded {now}s after launch")
            if campaign.is_terminal:
                result.done_s = now
                return
            self.check_alive("during the round")
            self.revive()
            if 1 not in rounds and time.monotonic() - last_scan > 5:
                self.count_lost_replies()
                last_scan = time.monotonic()
            if time.time() > deadline:
                raise Abort(
                    f"timeout: campaign still {campaign.status} {now:.0f}s after launch, rounds {sorted(rounds)}"
                )
            if time.monotonic() - last_report > 15:
                log(f"N={self.n}: campaign {campaign.status}, rounds {sorted(rounds)}, {now:.0f}s after launch")
                last_report = time.monotonic()
            time.sleep(0.5)

    def count_lost_replies(self) -> None:
        """A node whose reply the SuperLink refused does not send it again: the round then waits out the
        campaign's round timeout and merges the replies it has (the lost ones are recorded as failures)."""
        lost = lost_replies(self.site.stack.state_dir)
        if lost > self.result.lost_replies:
            log(f"N={self.n}: {lost} node(s) could not send their reply; the round will wait out its timeout")
        self.result.lost_replies = lost

    def record_round(self) -> None:
        from campaigns.models import Participation, Round

        campaign, result = self.campaign, self.result
        result.campaign_status, result.campaign_reason = campaign.status, campaign.status_reason[:200]
        result.release = hasattr(campaign, "release") and campaign.release is not None
        round1 = Round.objects.filter(campaign=campaign, number=1).first()
        if round1 is not None:
            result.participations = Participation.objects.filter(round=round1).count()
            result.participants_ok, result.failures = round1.participants, round1.failures
            result.server_round_s = None if round1.duration_s is None else round(round1.duration_s, 1)
        if campaign.status == "completed" and result.participants_ok < result.train:
            result.outcome = (
                f"completed with {result.participants_ok}/{result.train} updates merged after the round timeout "
                f"({result.failures} failed)"
            )
        elif campaign.status == "completed":
            result.outcome = "ok" if result.release else "completed, but no release"
        else:
            result.outcome = f"campaign {campaign.status}: {campaign.status_reason}"

    def check_alive(self, when: str) -> None:
        supervisor = self.site.stack.supervisor
        dead = [k for k in ("superlink", "web", "worker") if supervisor.returncode(k) is not None]
        if dead:
            raise Abort(f"{', '.join(dead)} died {when}")

    def cancel(self) -> None:
        """A campaign still queued or running is cancelled the console's way (its Flower run is stopped)."""
        if self.campaign is None:
            return
        from campaigns.services import campaign_cancel

        self.campaign.refresh_from_db()
        if not self.campaign.is_terminal:
            try:
                campaign_cancel(campaign=self.campaign, reason=f"scale benchmark: {self.result.outcome}"[:200])
            except Exception as exc:
                log(f"cancel failed: {exc!r}")
            self.campaign.refresh_from_db()
        self.result.campaign_status = self.result.campaign_status or self.campaign.status


def warm_counts(home: Path | None) -> dict[str, int]:
    """The shared warm worker's own count of jobs (run, attached, cancelled, refused, failed)."""
    from federation.warm_worker import STATUS_FILE

    try:
        return dict(json.loads((home / STATUS_FILE).read_text())["jobs"]) if home else {}
    except (OSError, ValueError, KeyError):
        return {}


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def online_count() -> int:
    from flwr.proto.control_pb2 import ListNodesRequest
    from flwr.supercore.constant import NodeStatus

    from campaigns.services import superlink_client

    nodes = superlink_client().ListNodes(ListNodesRequest()).nodes_info
    return sum(1 for node in nodes if node.status == NodeStatus.ONLINE)


def stop_nodes(supervisor: Any, nodes_dir: Path, timeout: float = 15.0) -> int:
    """All nodes at once (SIGTERM to every group, then SIGKILL), not one by one. Returns how many had died before."""
    names = supervisor.names("node-")
    dead = sum(1 for name in names if supervisor.returncode(name) is not None)
    supervisor.stop_many(names, timeout)
    time.sleep(0.5)
    stragglers = pids_under(nodes_dir)  # a join's SuperNode runs in its own session; SuperExecs may linger
    if stragglers:
        log(f"{len(stragglers)} node processes outlived their SuperNode: stopping them")
        kill_all(stragglers, signal.SIGTERM)
        time.sleep(2)
        kill_all(pids_under(nodes_dir))
    return dead


def scan_logs(state_dir: Path, result: Result) -> None:
    """Count error lines in every log of this size, by kind of process; keep a few distinct examples."""
    samples: dict[str, None] = {}
    for path in sorted(state_dir.rglob("*.log")):
        kind = "node" if "nodes" in path.parts or path.stem.startswith("node-") else path.stem
        for line in path.read_text(errors="replace").splitlines():
            if ERROR_LINE.search(line):
                result.log_errors[kind] = result.log_errors.get(kind, 0) + 1
                if len(samples) < 4:
                    samples.setdefault(f"{kind}: {ANSI.sub('', line).strip()[:160]}")
    result.error_samples = list(samples)
    result.db_locked = _read(state_dir / "logs" / "superlink.log").count(DB_LOCKED)
    result.lost_replies = lost_replies(state_dir)


def lost_replies(state_dir: Path) -> int:
    """Nodes whose reply the SuperLink refused: "Failed to send message" in their log."""
    return sum(1 for path in state_dir.rglob("*.log") if "node" in path.name and SEND_FAILED in _read(path))


# ------------------------------------------------------------------------------------------------ the sweep


def run_child(plan: Result, args: argparse.Namespace, deadline: float) -> Result:
    """One size in its own Python process (a fresh Django, database and SuperLink); returns its Result."""
    n = plan.n
    out = VAR / f"result-{plan.label}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--one", str(n), "--train", str(plan.train),
               *(["--all-train-run"] if plan.all_train else []), "--out", str(out),
               "--deadline", str(deadline), *_pass_through(args)]  # fmt: skip
    child = subprocess.Popen(command)
    try:
        child.wait(timeout=max(60.0, deadline - time.time() + 120))
    except subprocess.TimeoutExpired:
        log(f"N={n}: child overran its deadline; asking it to stop")
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=90)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    except KeyboardInterrupt:
        child.wait()  # it got the Ctrl-C too and is winding down
        raise
    finally:
        leftovers = _sweep(VAR / plan.label)
    if out.exists():
        result = Result(**json.loads(out.read_text()))
    else:
        result = replace(plan, outcome=f"child exited with code {child.returncode} and no result")
    result.leftovers = leftovers
    return result


def _sweep(var: Path) -> list[str]:
    """Safety net: anything of this size still running (by working directory or BAYANIHAN_VAR) is stopped."""
    pids = set(pids_under(var)) | set(pids_with_env("BAYANIHAN_VAR", str(var)))
    names = sorted(program(pid) for pid in pids)
    if pids:
        log(f"{len(pids)} processes of {var.name} outlived it, stopping them: {', '.join(map(describe, pids))}")
        kill_all(pids, signal.SIGTERM)
        time.sleep(3)
        kill_all(set(pids_under(var)) | set(pids_with_env("BAYANIHAN_VAR", str(var))))
    return names


def program(pid: int) -> str:
    """The program a process runs: the script after the interpreter, e.g. flower-superexec."""
    words = describe(pid).split()
    script = next((w for w in words[2:3] if not w.startswith("-")), words[-1] if len(words) > 1 else "?")
    return Path(script).name


def describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            command = fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return str(pid)
    return f"{pid} {command[:120]}"


def _pass_through(args: argparse.Namespace) -> list[str]:
    return [
        "--online-timeout", str(args.online_timeout), "--round-timeout", str(args.round_timeout),
        "--min-available-gib", str(args.min_available_gib), "--join-nodes", str(args.join_nodes),
        "--node-nice", str(args.node_nice), "--campaign-round-timeout", str(args.campaign_round_timeout),
        "--per-round", str(args.per_round), "--warm", args.warm, "--node-poll-seconds", str(args.node_poll_seconds),
        "--sample-interval", str(args.sample_interval), "--node-pss-every", str(args.node_pss_every),
    ]  # fmt: skip


def broke_early(result: Result) -> bool:
    """A size that cannot get better with more nodes: it broke before the round, or ran out of time."""
    return not result.ok and (
        result.phase in ("start", "enroll", "nodes", "online") or result.outcome.startswith("timeout")
    )


def sweep(args: argparse.Namespace, timer: Timer) -> list[Result]:
    results: list[Result] = []
    stop = ""
    budget_end = time.time() + args.budget_min * 60 - timer.minutes * 60
    plans = [Result(n=n, train=min(n, args.per_round or n), warm=args.warm) for n in args.sizes]
    plans += [Result(n=n, train=n, all_train=True, warm=args.warm)
              for n in args.all_train_sizes if min(n, args.per_round or n) < n]  # fmt: skip
    for plan in plans:
        n = plan.n
        if stop and not plan.all_train:
            results.append(replace(plan, outcome=f"not run: {stop}"))
            continue
        if budget_end - time.time() < args.min_size_s:
            results.append(replace(plan, outcome="not run: time budget spent"))
            continue
        floor = args.min_available_gib + 0.5
        if mem_available() / GIB < floor:
            results.append(replace(plan, outcome=f"not run: MemAvailable under {floor:.1f} GiB before starting"))
            continue
        log(f"=== N={n}, {plan.train} training")
        result = run_child(plan, args, budget_end)
        results.append(result)
        log(f"N={n}: {result.outcome} ({result.wall_s}s)")
        if broke_early(result) and not plan.all_train:
            stop = f"N={n} broke ({result.phase})"
    return results


# ------------------------------------------------------------------------------------------------ report


def fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}{unit}"


def mem_cell(entry: dict[str, Any] | None) -> str:
    if not entry or not entry.get("rss"):
        return "–"
    return f"{entry['pss']:.0f} ({entry['rss']:.0f})"


def spread_cell(entry: dict[str, Any] | None) -> str:
    if not entry or not entry.get("count"):
        return "–"
    pss = f"{fmt(entry.get('pss_median'))} / {fmt(entry.get('pss_max'))}"
    return f"{pss} ({fmt(entry['rss_median'])} / {fmt(entry['rss_max'])})"


def training(r: Result) -> str:
    return "all" if r.trains_all else str(r.train)


def main_table(results: list[Result]) -> str:
    head = (
        "| N | training | enroll s | nodes online s | launch → round 1 s | launch → done s | updates merged | "
        "SuperLink tree MiB | web MiB | worker MiB | SuperNode MiB typ / max | ClientApp MiB typ / max | "
        "ClientApps at once | shared warm worker MiB | min MemAvailable GiB | outcome |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    rows = [head]
    for r in results:
        mem = r.memory or {}
        groups = mem.get("groups", {})
        part = f"{r.participants_ok}/{r.train}" if r.phase in ("round", "done") else "–"
        rows.append(
            f"| {r.n} | {training(r)} | {fmt(r.enroll_s, digits=1)} | {fmt(r.online_s, digits=1)} | "
            f"{fmt(r.round1_s, digits=1)} | "
            f"{fmt(r.done_s, digits=1)} | {part} | {mem_cell(groups.get('superlink'))} | "
            f"{mem_cell(groups.get('web'))} | {mem_cell(groups.get('worker'))} | {spread_cell(mem.get('node'))} | "
            f"{spread_cell(mem.get('clientapp'))} | {mem.get('clientapp', {}).get('concurrent_max', '–')} | "
            f"{mem_cell(groups.get('warm worker'))} | {mem.get('min_available_gib', '–')} | "
            f"{r.outcome.replace('|', '/')} |"
        )
    return "\n".join(rows)


def comm(by_process: dict[str, Any], program: str) -> dict[str, Any] | None:
    """The entry for `program` (the kernel keeps only the first 15 characters of a process name)."""
    return next((v for k, v in by_process.items() if program.startswith(k)), None)


def warm_cell(r: Result) -> str:
    if r.warm != "shared":
        return "off (every job cold)"
    j = r.warm_jobs
    return " / ".join(str(j.get(k, "–")) for k in ("run", "attached", "cancelled", "failed")) if j else "–"


def detail_table(results: list[Result]) -> str:
    head = (
        "| N | training | site up s | launch → submitted s | launch → round 0 s | server's round 1 s | failures | "
        "lost replies | node restarts | "
        "SuperLink 'database is locked' | "
        "flower-superlink | flower-superexec | flwr-serverapp | join wrapper | all ours MiB | "
        "MemAvailable at start GiB | warm jobs run / attached / cancelled / failed | error lines in logs | "
        "sampler CPU s | teardown s | wall s |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"
    )
    rows = [head]
    for r in results:
        if not r.memory:
            continue
        by = r.memory.get("superlink_by_process", {})
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r.log_errors.items())) or "none"
        rows.append(
            f"| {r.n} | {training(r)} | {fmt(r.site_s, digits=1)} | {fmt(r.submitted_s, digits=1)} | "
            f"{fmt(r.round0_s, digits=1)} | "
            f"{fmt(r.server_round_s, digits=1)} | {r.failures} | {r.lost_replies} | {r.restarts} | {r.db_locked} | "
            f"{mem_cell(comm(by, 'flower-superlink'))} | "
            f"{mem_cell(comm(by, 'flower-superexec'))} | {mem_cell(comm(by, 'flwr-serverapp'))} | "
            f"{mem_cell(r.memory.get('join_wrapper'))} | {mem_cell(r.memory.get('total'))} | "
            f"{r.baseline_available_gib} | {warm_cell(r)} | {errors} | "
            f"{r.memory.get('sampler', {}).get('cpu_s', '–')} | "
            f"{fmt(r.teardown_s, digits=1)} | {fmt(r.wall_s, digits=0)} |"
        )
    return "\n".join(rows)


def findings(results: list[Result], args: argparse.Namespace) -> str:
    """What the numbers say, computed from them (nothing here is written in advance)."""
    lines: list[str] = []
    ran = [r for r in results if r.memory]
    ok = [r for r in ran if r.ok]
    if ok:
        lines.append("Rounds that merged every drawn node's update: " + ", ".join(r.name for r in ok) + ".")
    partial = [r for r in ran if r.completed and not r.ok]
    for r in partial:
        lines.append(f"{r.name} completed its round without every update: {r.outcome}.")
    if not ok and not partial:
        lines.append("No size completed its round on this machine.")
    for r in results:
        if not r.completed:
            where = f" while in phase `{r.phase}`" if r.phase else ""
            started = f", {r.started_nodes}/{r.n} nodes started, {r.online} online" if r.memory else ""
            lines.append(f"{r.name} did not complete{where}{started}: {r.outcome}.")
    locked = [r for r in ran if r.lost_replies or r.db_locked]
    if locked:
        lines.append(
            "The SuperLink's SQLite state refused concurrent writes ('database is locked' → HTTP 500) at "
            + ", ".join(f"{r.name} ({r.db_locked} errors, {r.lost_replies} replies lost)" for r in locked)
            + "; a SuperNode does not resend a refused reply, so the round waited out the campaign's round timeout "
            "and merged the updates it had."
        )
    restarted = [r for r in ran if r.restarts]
    if restarted:
        lines.append(
            "SuperNodes that exited and were started again after 5 s (as `join` does): "
            + ", ".join(f"{r.name}: {r.restarts}" for r in restarted)
            + "."
        )
    timed = sorted(
        (r for r in ran if r.completed and not r.all_train and r.round1_s is not None and r.online_s is not None),
        key=lambda r: r.n,
    )
    if len(timed) >= 2 and timed[0].n < timed[-1].n:
        a, b = timed[0], timed[-1]
        span = b.n - a.n
        lines.append(
            f"From {a.name} to {b.name}: bringing nodes online costs {(b.online_s - a.online_s) / span:.2f} s "
            f"per extra node and the round (launch → recorded) {(b.round1_s - a.round1_s) / span:.2f} s per extra "
            f"node on {len(os.sched_getaffinity(0))} cores."
        )
    nodes = [r for r in ran if r.online_s is not None and r.memory.get("node", {}).get("pss_median")]
    apps = [r for r in ran if r.memory.get("clientapp", {}).get("pss_median")]
    node_pss = statistics.median(r.memory["node"]["pss_median"] for r in nodes) if nodes else 0.0
    if nodes:
        infra = max(sum((r.memory["groups"].get(g) or {}).get("pss", 0) for g in ("superlink", "web", "worker"))
                    for r in ran)  # fmt: skip
        start_avail = max(r.baseline_available_gib for r in ran) * 1024
        room = start_avail - args.min_available_gib * 1024 - infra
        text = (
            f"A standing SuperNode (flower-supernode + its flower-superexec) holds ≈ {node_pss:.0f} MiB PSS. "
            f"With ≈ {start_avail / 1024:.1f} GiB available at the start, the platform's own {infra:.0f} MiB and "
            f"the {args.min_available_gib:.0f} GiB guard, this machine holds about {room / node_pss:.0f} idle nodes"
        )
        warm = [r.memory["groups"]["warm worker"]["pss"] for r in ran if r.memory["groups"].get("warm worker")]
        if apps and warm:
            app_pss, warm_pss = statistics.median(r.memory["clientapp"]["pss_median"] for r in apps), max(warm)
            text += (
                f"; in a round every drawn node's per-message ClientApp is a shim without torch that holds "
                f"≈ {app_pss:.0f} MiB PSS while the one shared warm worker trains the jobs one after another "
                f"(peak {warm_pss:.0f} MiB PSS for all nodes), so by PSS a training node costs "
                f"≈ {node_pss + app_pss:.0f} MiB and about {(room - warm_pss) / (node_pss + app_pss):.0f} nodes "
                "training in the same round fit"
            )
        elif apps:
            app_pss = statistics.median(r.memory["clientapp"]["pss_median"] for r in apps)
            text += (
                f"; each ClientApp process holds ≈ {app_pss:.0f} MiB PSS while it trains and in a round every "
                f"drawn node runs one at the same time, so by PSS a training node costs ≈ {node_pss + app_pss:.0f} "
                f"MiB and about {room / (node_pss + app_pss):.0f} training nodes fit (a pessimistic count: the more "
                "processes share torch's pages, the smaller each one's share; the min MemAvailable column is what "
                "the machine had left)"
            )
        lines.append(text + ".")
    joins = [r.memory["join_wrapper"]["pss"] for r in ran if r.memory.get("join_wrapper", {}).get("pss")]
    if joins and nodes:
        lines.append(
            f"A `python -m federation join` wrapper adds ≈ {statistics.median(joins):.0f} MiB PSS per node "
            f"({100 * statistics.median(joins) / node_pss:.0f}% of a SuperNode): the other nodes ran "
            "`flower-supernode` directly with their enrolled key."
        )
    link = sorted(
        (r.n, r.memory["groups"]["superlink"]["pss"])
        for r in ran
        if r.completed and not r.all_train and r.memory["groups"].get("superlink")
    )
    if len(link) >= 2 and link[0][0] < link[-1][0]:
        (n0, m0), (n1, m1) = link[0], link[-1]
        lines.append(
            f"The SuperLink tree peaked at {m0:.0f} MiB PSS with {n0} nodes and {m1:.0f} MiB with {n1} "
            f"({(m1 - m0) / (n1 - n0):+.1f} MiB per extra node)."
        )
    lines.append(
        "Web server / worker peaks, MiB PSS (RSS): "
        + "; ".join(
            f"{r.name}: {mem_cell(r.memory['groups'].get('web'))} / {mem_cell(r.memory['groups'].get('worker'))}"
            for r in ran
        )
        + "."
    )
    left = {r.name: ", ".join(r.leftovers) for r in results if r.leftovers}
    if left:
        lines.append(
            "Still running after the site had stopped (found by the sweep and killed): "
            + "; ".join(f"{k}: {v}" for k, v in left.items())
            + "."
        )
    return " ".join(lines)


def render(results: list[Result], args: argparse.Namespace) -> str:
    samples = [f"- {r.name}: {s}" for r in results for s in r.error_samples]
    return "\n".join(
        [
            "One round, N real SuperNodes connected and admitted through enrollment (TLS, node auth), of which "
            f"{args.per_round or 'all'} are drawn to train (the campaign's nodes per round; the sizes in "
            f"{args.all_train_sizes or 'none'} run once more with every node training), the tiny random Llama "
            f"({RECORDS_PER_NODE} records per node, {TRAIN_CONFIG['local-steps']} local step, seq-len "
            f"{TRAIN_CONFIG['seq-len']}, 1 thread per app process), launched with campaign_launch (Celery → "
            "Control API → SuperLink → nodes → ServerApp → site). Times in seconds; memory as peak PSS (peak RSS) "
            "in MiB, sampled every "
            f'{args.sample_interval} s (SuperNodes\' PSS every {args.node_pss_every} samples); "typ" is the median '
            f"over nodes or ClientApp processes. Memory guard: MemAvailable < {args.min_available_gib} GiB kills "
            f"the nodes and ends the size. {args.join_nodes} node per size runs the full `python -m federation join` "
            "wrapper; the others run `flower-supernode` directly with their enrolled key (what join runs inside), "
            f"and the benchmark starts one again {RESTART_AFTER_S:.0f} s after it exits, as join does. Node processes "
            f"run at nice {args.node_nice}, process and session autogroup (contributors' nodes have machines of "
            "their own; here they must not starve the SuperLink and the site). "
            + (
                "Every node runs the node's own `flwr-clientapp` (installed code only) as a shim that hands its job "
                "to one warm worker shared by all N nodes (`join --warm-worker`; torch and the model loaded once "
                "for the host, one job trains at a time, in arrival order). "
                if args.warm == "shared"
                else "Every job runs cold: its own ClientApp process imports torch and loads the model (--warm off). "
            )
            + f"Each node's SuperExec asks its SuperNode for work every {args.node_poll_seconds:g} s "
            "(FLWR_SUPEREXEC_TASK_POLL_INTERVAL; `join` uses 0.2 s for one node on its own machine: at that rate 100 "
            "nodes' idle polling alone kept the load average above 100 on these 2 cores and the round's ClientApps "
            "could not start). " + f"The campaign's round timeout is {args.campaign_round_timeout:.0f} s: "
            "after it the round merges the updates that came back and records the missing nodes as failed. "
            "Logs: var/bench/scale/nN/run/logs/.",
            "",
            main_table(results),
            "",
            "Detail (SuperLink tree by process, MiB PSS (RSS); all ours = every process above at its peak moment):",
            "",
            detail_table(results),
            "",
            "**What this shows.** " + findings(results, args),
            *(["", "First error lines in the logs:", "", *samples] if samples else []),
        ]
    )


# ------------------------------------------------------------------------------------------------ entry points


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100], help="numbers of SuperNodes")
    parser.add_argument("--online-timeout", type=float, default=420, help="seconds for N nodes to come online")
    parser.add_argument("--round-timeout", type=float, default=600, help="seconds from launch to campaign end")
    parser.add_argument("--budget-min", type=float, default=28, help="the whole sweep's time budget in minutes")
    parser.add_argument("--min-size-s", type=float, default=150, help="skip a size with less budget than this left")
    parser.add_argument("--min-available-gib", type=float, default=2.0, help="memory guard floor (MemAvailable)")
    parser.add_argument("--join-nodes", type=int, default=1, help="nodes run through `python -m federation join`")
    parser.add_argument("--node-nice", type=int, default=19,
                        help="nice value (process and autogroup) of the node processes: contributors' nodes "
                        "have machines of their own, so here they yield the cores to the SuperLink and the site; "
                        "0: off")  # fmt: skip
    parser.add_argument("--per-round", type=int, default=10,
                        help="nodes drawn to train in the round (the campaign's nodes per round); "
                        "0: every node")  # fmt: skip
    parser.add_argument("--all-train-sizes", type=int, nargs="*", default=[50],
                        help="sizes run once more with every node training at once")  # fmt: skip
    parser.add_argument("--campaign-round-timeout", type=float, default=300,
                        help="the campaign's round timeout: how long the round waits for replies")  # fmt: skip
    parser.add_argument(
        "--warm",
        choices=("shared", "off"),
        default="shared",
        help="shared: one warm worker for all nodes (join --warm-worker); off: every job cold",
    )
    parser.add_argument("--node-poll-seconds", type=float, default=1.0,
                        help="each node's SuperExec task poll (FLWR_SUPEREXEC_TASK_POLL_INTERVAL); join's 0.2 s costs "
                        "5 local requests a second per node, which 100 nodes on 2 cores cannot pay")  # fmt: skip
    parser.add_argument("--sample-interval", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--node-pss-every", type=int, default=4, help="read SuperNodes' PSS every K samples")
    parser.add_argument("--no-write", action="store_true", help="print the tables, leave docs/benchmarks.md alone")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size (the child)
    parser.add_argument("--train", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--all-train-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def child_main(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    plan = Result(n=args.one, train=args.train or args.one, all_train=args.all_train_run, warm=args.warm)
    result = run_size(plan, args, args.deadline or time.time() + args.online_timeout + args.round_timeout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(asdict(result), indent=2))
    return 130 if result.outcome == "interrupted" else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        return child_main(args)
    timer = Timer()
    VAR.mkdir(parents=True, exist_ok=True)
    results = sweep(args, timer)
    body = render(results, args)
    title = "Scale: one round with many SuperNodes"
    write_section("scale", title, body, "make bench-scale", timer, dry_run=args.no_write)
    return 0 if any(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
