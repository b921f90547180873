"""What the scale benchmark reads from (and does to) this host's processes through /proc: RSS and PSS of process
trees, the memory sampler thread, the memory guard that kills the nodes before the machine runs out, the yielder that
lowers the nodes' priority, and finding our processes by working directory or environment. Linux only.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 2**20
GIB = 2**30
PAGE = os.sysconf("SC_PAGE_SIZE")
CLIENTAPP = "flwr-clientapp"


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
