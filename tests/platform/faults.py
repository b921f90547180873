"""Fault injection for tests and benchmarks that run the real platform (test tooling: never imported by the product).

Two halves:

- **Processes.** Find the processes of a live platform by role (SuperLink, a node's SuperNode, ServerApp, ClientApp,
  Celery worker, web, ...) under one directory — a test's tmp dir, a benchmark run's var dir — then kill -9 or
  SIGTERM them, wait for a round to be recorded in the database, and assert that nothing was left behind.
  A process belongs to a directory when its working directory, a path on its command line, or one of the state
  variables of its environment (BAYANIHAN_VAR, FLWR_HOME) lies inside it: the SuperLink and nodes run from their
  state folder, the web and worker carry BAYANIHAN_VAR, and Flower's app processes inherit both cwd and env. That
  is what makes it safe on a machine where other people's platforms are running too.
- **HTTP faults.** `FaultProxy`, a small loopback-only HTTP(S) proxy with a bounded lifetime that forwards to a
  target and answers HTTP 500 (or any status) for requests whose path matches a pattern, a given number of times —
  e.g. "the SuperLink answers 500 to the next three pull-messages".

Django is imported only by the functions that read the database, so benchmarks can use the rest without it.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import re
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

# --- Processes -------------------------------------------------------------------------------------------------

# Role → how its command line reads. Order matters: the first match wins (a ClientApp's command line may mention
# "federation", a join's never mentions "flwr-clientapp").
ROLES: dict[str, Callable[[list[str]], bool]] = {
    "superlink": lambda cmd: _has_prog(cmd, "flower-superlink"),
    "supernode": lambda cmd: _has_prog(cmd, "flower-supernode"),
    "superexec": lambda cmd: _has_prog(cmd, "flower-superexec"),
    "serverapp": lambda cmd: _has_prog(cmd, "flwr-serverapp"),
    # Flower's own app runtime, or the node-private one: `python -m federation.node_runtime`, or the task launcher's
    # per-message client (`python -S -m federation.task_launcher <Flower's flwr-clientapp arguments>`).
    "clientapp": lambda cmd: (
        _has_prog(cmd, "flwr-clientapp")
        or "federation.node_runtime" in cmd
        or ("federation.task_launcher" in cmd and "serve" not in cmd)
    ),
    # The warm worker's task launcher and the task processes it forks (they keep its command line).
    "launcher": lambda cmd: "federation.task_launcher" in cmd and "serve" in cmd,
    "warm-worker": lambda cmd: "federation.warm_worker" in cmd,
    "worker": lambda cmd: _has_prog(cmd, "celery") and "worker" in cmd,
    "web": lambda cmd: _has_prog(cmd, "uvicorn") or _has_prog(cmd, "gunicorn") or _has_prog(cmd, "daphne"),
    "caddy": lambda cmd: _has_prog(cmd, "caddy"),
    "join": lambda cmd: "federation" in cmd and ("join" in cmd or "node" in cmd) and _module_run(cmd, "federation"),
    "redis": lambda cmd: _has_prog(cmd, "redis-server"),
    "demo": lambda cmd: any(a.endswith("manage.py") for a in cmd) and ("demo" in cmd or "serve" in cmd),
}
# What must not outlive a platform (the roles above but the demo command itself, which is the caller's to end).
PLATFORM_ROLES = tuple(r for r in ROLES if r != "demo")
# Environment variables that name a process's state folder.
STATE_VARIABLES = ("BAYANIHAN_VAR", "FLWR_HOME")
# Local steps for a test that stops a node in the middle of its round: long enough that the node is still training
# when a watcher (a 0.2 s poll and a process scan) acts. On the warm path 2 steps of the tiny model are done, and the
# reply sent, before that on a quiet machine. 400 steps: ≈ 1.5 s on a quiet core (3.7 ms a step), ≈ 15 s at ten
# times the load, inside the round timeouts either way.
STEPS_TO_STOP_MID_ROUND = 400


def _has_prog(cmd: list[str], name: str) -> bool:
    """`name` is the program, or the script/module a Python interpreter runs (`python -m celery`, `.../bin/celery`)."""
    for i, arg in enumerate(cmd[:4]):
        if os.path.basename(arg) == name:
            return True
        if arg == "-m" and i + 1 < len(cmd) and cmd[i + 1].split(".")[0] == name:
            return True
    return False


def _module_run(cmd: list[str], module: str) -> bool:
    return any(a == "-m" and i + 1 < len(cmd) and cmd[i + 1] == module for i, a in enumerate(cmd))


@dataclass(frozen=True)
class PlatformProcess:
    pid: int
    role: str
    cmdline: tuple[str, ...]
    cwd: str
    paths: tuple[str, ...]  # the paths that tie it to its directories (cwd, command-line paths, state variables)

    @property
    def process(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def describe(self) -> str:
        return f"{self.role} pid {self.pid}: {' '.join(self.cmdline)[:200]} (cwd {self.cwd})"


def role_of(cmdline: list[str]) -> str | None:
    for role, matches in ROLES.items():
        if matches(cmdline):
            return role
    return None


def _inside(path: str, folder: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(folder)
    except (OSError, ValueError, RuntimeError):
        return False


def _own_paths(proc: psutil.Process, cmdline: list[str]) -> tuple[str, str, tuple[str, ...]]:
    """(cwd, the absolute paths a process names: cwd, on its command line, in its state variables)."""
    try:
        cwd = proc.cwd()
    except (psutil.Error, OSError):
        cwd = ""
    paths = [cwd] if cwd else []
    for arg in cmdline:
        # `--flag=/path` and `key="/path"` (SuperNode node config) name paths too.
        for part in re.split(r"[=\s\"']", arg):
            if part.startswith("/"):
                paths.append(part)
    try:
        env = proc.environ()
    except (psutil.Error, OSError):
        env = {}
    paths += [env[k] for k in STATE_VARIABLES if env.get(k, "").startswith("/")]
    return cwd, tuple(paths)


def find_processes(
    under: Path | str,
    role: str | Iterable[str] | None = None,
    *,
    node: str | None = None,
    exclude: Iterable[int] = (),
) -> list[PlatformProcess]:
    """Live processes of the platform running under `under`, optionally only `role`(s), only node `node`'s.

    A node's processes are those tied to a folder named `node` inside a `nodes` folder (`…/nodes/node-1`, the home
    the demo, tests and `join --home` use): its `join`, its SuperNode and the ClientApps that SuperNode started.
    """
    folder = Path(under).resolve()
    roles = {role} if isinstance(role, str) else (set(role) if role is not None else set(ROLES))
    skip = {os.getpid(), *exclude}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if proc.pid in skip or not cmdline:
                continue
            kind = role_of(cmdline)
            if kind is None or kind not in roles:
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue  # dead already, only waiting for its parent to reap it
            cwd, paths = _own_paths(proc, cmdline)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        mine = [p for p in paths if _inside(p, folder)]
        if not mine:
            continue
        if node is not None and not any(_in_node_home(p, node) for p in mine):
            continue
        found.append(PlatformProcess(proc.pid, kind, tuple(cmdline), cwd, tuple(mine)))
    return found


def _in_node_home(path: str, node: str) -> bool:
    parts = Path(path).parts
    return any(parts[i] == "nodes" and parts[i + 1] == node for i in range(len(parts) - 1))


def find_one(under: Path | str, role: str, *, node: str | None = None, timeout: float = 0.0) -> PlatformProcess:
    """The one process of `role` (for `node`) under `under`, waiting up to `timeout` s for it to appear."""
    deadline = time.monotonic() + timeout
    while True:
        found = find_processes(under, role, node=node)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            listing = "\n".join(p.describe() for p in found)
            raise LookupError(f"{len(found)} {role} processes under {under} (node {node}), expected one:\n{listing}")
        if time.monotonic() >= deadline:
            raise LookupError(f"no {role} process under {under}" + (f" for node {node}" if node else ""))
        time.sleep(0.2)


def send(processes: Iterable[PlatformProcess], sig: int = signal.SIGKILL) -> list[int]:
    """Signal each process (SIGKILL: `kill -9`, the crash; SIGTERM: a clean stop); return the pids signalled."""
    hit = []
    for p in processes:
        try:
            os.kill(p.pid, sig)
            hit.append(p.pid)
        except ProcessLookupError:
            pass
    return hit


def kill9(under: Path | str, role: str, *, node: str | None = None, timeout: float = 0.0) -> PlatformProcess:
    """`kill -9` the one `role` process (for `node`) under `under` and wait until it is gone."""
    target = find_one(under, role, node=node, timeout=timeout)
    send([target], signal.SIGKILL)
    _wait_gone([target.pid], 10)
    return target


def terminate(under: Path | str, role: str, *, node: str | None = None, timeout: float = 10.0) -> list[int]:
    """SIGTERM every `role` process (for `node`) under `under`; SIGKILL what is still alive after `timeout` s."""
    targets = find_processes(under, role, node=node)
    send(targets, signal.SIGTERM)
    left = _wait_gone([p.pid for p in targets], timeout)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return [p.pid for p in targets]


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Pids still alive (not zombies) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def leftovers(under: Path | str, *, grace: float = 10.0, exclude: Iterable[int] = ()) -> list[PlatformProcess]:
    """Platform processes still running under `under` after up to `grace` s (stopping takes a moment)."""
    deadline = time.monotonic() + grace
    while True:
        left = find_processes(under, PLATFORM_ROLES, exclude=exclude)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.5)


def kill_leftovers(under: Path | str, *, exclude: Iterable[int] = ()) -> list[PlatformProcess]:
    """SIGKILL whatever platform process is left under `under` (so the next run starts clean); return them."""
    left = find_processes(under, PLATFORM_ROLES, exclude=exclude)
    send(left, signal.SIGKILL)
    _wait_gone([p.pid for p in left], 10)
    return left


def assert_no_process_left(under: Path | str, *, grace: float = 10.0) -> None:
    """Fail naming every platform process still running under `under` (and kill them, so one failure stays one)."""
    left = leftovers(under, grace=grace)
    if left:
        kill_leftovers(under)
        listing = "\n".join(p.describe() for p in left)
        raise AssertionError(f"{len(left)} process(es) left behind under {under}:\n{listing}")


# --- Rounds in the database --------------------------------------------------------------------------------------


def recorded_rounds(campaign: Any, using: str | None = None) -> list[int]:
    """Round numbers recorded for `campaign` (a Campaign or its id), in order; round 0 is the base model."""
    from campaigns.models import Round

    campaign_id = getattr(campaign, "pk", campaign)
    rounds = Round.objects.using(using) if using else Round.objects
    recorded = rounds.filter(campaign_id=campaign_id).exclude(eval_loss=None).order_by("number")
    return list(recorded.values_list("number", flat=True))


def wait_for_round(
    campaign: Any,
    number: int,
    *,
    timeout: float = 300.0,
    check: Callable[[], None] | None = None,
    using: str | None = None,
    poll: float = 0.5,
) -> float:
    """Wait until round `number` of `campaign` is recorded; return the seconds waited.

    Raises TimeoutError after `timeout` s, or RuntimeError when the campaign ends first (with its reason), so a test
    never waits out its whole timeout on a campaign that already failed. `check` (e.g. `stack.check`) runs each
    poll: a crashed process stops the wait with its own error.
    """
    from campaigns.models import Campaign

    campaign_id = getattr(campaign, "pk", campaign)
    campaigns = Campaign.objects.using(using) if using else Campaign.objects
    started = time.monotonic()
    while True:
        if number in recorded_rounds(campaign_id, using):
            return time.monotonic() - started
        current = campaigns.get(pk=campaign_id)
        if current.is_terminal:
            raise RuntimeError(
                f"campaign {campaign_id} {current.status} before round {number} was recorded "
                f"(rounds {recorded_rounds(campaign_id, using)}): {current.status_reason}"
            )
        if check is not None:
            check()
        if time.monotonic() - started > timeout:
            raise TimeoutError(
                f"round {number} of campaign {campaign_id} not recorded after {timeout:.0f}s "
                f"(rounds {recorded_rounds(campaign_id, using)}, status {current.status})"
            )
        time.sleep(poll)


def round_numbers_problems(numbers: list[int], expected_last: int | None = None) -> list[str]:
    """What is wrong with a campaign's round numbers: gaps, duplicates, not starting at 0, missing the last."""
    problems = []
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    if duplicates:
        problems.append(f"duplicated {duplicates}")
    unique = sorted(set(numbers))
    if unique and unique[0] != 0:
        problems.append(f"starts at {unique[0]}")
    gaps = [n for n in range(unique[0] if unique else 0, (unique[-1] if unique else -1) + 1) if n not in unique]
    if gaps:
        problems.append(f"missing {gaps}")
    if expected_last is not None and (not unique or unique[-1] != expected_last):
        problems.append(f"last is {unique[-1] if unique else None}, expected {expected_last}")
    return problems


# --- HTTP faults ------------------------------------------------------------------------------------------------

# Not forwarded: they describe one connection, not the message (RFC 9110 §7.6.1), or are recomputed here.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
}


@dataclass
class Fault:
    """Answer `status` to the next `times` requests whose path (with query) matches `path` (re.search).

    `forward=True` sends the request to the target first and then answers `status` anyway: the work was done
    but the answer was lost, which is what makes a retry dangerous for anything that is not idempotent.
    `method` restricts it to one HTTP method.
    """

    path: str
    times: int = 1
    status: int = 500
    body: bytes = b"Internal Server Error (injected by the test's fault proxy)"
    forward: bool = False
    method: str | None = None
    injected: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.injected >= self.times:
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        return re.search(self.path, path) is not None


@dataclass
class Outage:
    """The target goes away for `seconds`, starting at the request after the `skip` first ones whose path matches
    `path` (re.search; `method` restricts it): what a web server restarting under its clients looks like.

    The triggering request reaches the target and its answer is lost (`forward=True`: the restart came while the
    answer was on its way, so a retry repeats work already done); every request during the outage, on any path, is
    read and its connection closed with no answer (the client sees the connection drop, as when the process dies).
    """

    path: str
    seconds: float = 20.0
    skip: int = 0
    method: str | None = None
    forward: bool = True
    seen: int = 0
    started: float | None = None  # time.monotonic() when it began
    dropped: int = 0  # requests that got no answer (the triggering one included)

    def active(self, now: float) -> bool:
        return self.started is not None and now < self.started + self.seconds

    def triggers(self, method: str, path: str) -> bool:
        """Counts a matching request; True for the one that starts the outage."""
        if self.started is not None or (self.method and self.method.upper() != method.upper()):
            return False
        if re.search(self.path, path) is None:
            return False
        self.seen += 1
        return self.seen > self.skip


@dataclass
class Exchange:
    method: str
    path: str
    status: int
    injected: bool


@dataclass
class FaultProxy:
    """Loopback HTTP(S) proxy in front of `target` (e.g. "https://127.0.0.1:9093") that injects `faults`.

    Serves TLS when `certfile`/`keyfile` are given (e.g. the SuperLink's own certificate, so nodes that trust the
    platform's CA talk to it unchanged); checks the target's certificate against `target_ca` (or the system's).
    Stops by itself after `lifetime` s, so a test that forgets it cannot leave it serving. Use as a context
    manager, or `start()`/`stop()`.
    """

    target: str
    faults: list[Fault] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    certfile: Path | str | None = None
    keyfile: Path | str | None = None
    target_ca: Path | str | None = None
    lifetime: float = 600.0
    timeout: float = 120.0  # per forwarded request
    exchanges: list[Exchange] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not ipaddress.ip_address(self.host).is_loopback:
            raise ValueError(f"the fault proxy serves loopback only, not {self.host}")
        parts = urlsplit(self.target)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"target must be http(s)://host:port, not {self.target!r}")
        self._scheme, self._target_host = parts.scheme, parts.hostname
        self._target_port = parts.port or (443 if parts.scheme == "https" else 80)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        self._stopped = threading.Event()

    # -- public ---------------------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """host:port the proxy listens on (what a SuperNode's --superlink would name)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.certfile else 'http'}://{self.address}"

    @property
    def running(self) -> bool:
        return self._server is not None and not self._stopped.is_set()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def add_outage(self, outage: Outage) -> Outage:
        with self._lock:
            self.outages.append(outage)
        return outage

    def injected(self, path: str | None = None) -> int:
        """How many answers were injected (for requests whose path matches `path`)."""
        with self._lock:
            return sum(1 for e in self.exchanges if e.injected and (path is None or re.search(path, e.path)))

    def forwarded(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for e in self.exchanges if not e.injected and (path is None or re.search(path, e.path)))

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        if self.certfile:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.certfile), str(self.keyfile) if self.keyfile else None)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = server.server_address[1]
        serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        # The bound on its lifetime: stop() once `lifetime` s have passed, whatever the test does.
        reaper = threading.Thread(target=self._expire, daemon=True)
        self._threads = [serving, reaper]
        serving.start()
        reaper.start()
        return self

    def stop(self) -> None:
        if self._server is None or self._stopped.is_set():
            return
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()
        # Kept-alive connections would go on being served by their handler threads: cut them too.
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def wait_stopped(self, timeout: float) -> bool:
        return self._stopped.wait(timeout)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------------------------------

    def _expire(self) -> None:
        if not self._stopped.wait(self.lifetime):
            self.stop()

    def _outage(self, method: str, path: str) -> tuple[Outage | None, bool]:
        """(the outage this request falls in, whether it is the request that starts it)."""
        now = time.monotonic()
        with self._lock:
            for outage in self.outages:
                if outage.active(now):
                    outage.dropped += 1
                    return outage, False
            for outage in self.outages:
                if outage.triggers(method, path):
                    outage.started, outage.dropped = now, outage.dropped + 1
                    return outage, True
        return None, False

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.injected += 1
                    return fault
        return None

    def _record(self, method: str, path: str, status: int, injected: bool) -> None:
        with self._lock:
            self.exchanges.append(Exchange(method, path, status, injected))

    def _connection(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            context = ssl.create_default_context(cafile=str(self.target_ca) if self.target_ca else None)
            return http.client.HTTPSConnection(
                self._target_host, self._target_port, timeout=self.timeout, context=context
            )
        return http.client.HTTPConnection(self._target_host, self._target_port, timeout=self.timeout)

    def _forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = self._connection()
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", f"{self._target_host}:{self._target_port}")
            for name, value in headers:
                conn.putheader(name, value)
            if body or method not in {"GET", "HEAD", "DELETE", "OPTIONS"}:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            response = conn.getresponse()
            data = response.read()
            return response.status, [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP], data
        finally:
            conn.close()


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as Flower's HTTP client uses it

    timeout = 60  # an idle kept-alive connection is closed after this, so no handler thread waits forever

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's signature
        pass  # the exchanges list is the log

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            if self.owner._stopped.is_set():
                self.close_connection = True
            self.owner._connections.add(self.connection)

    def finish(self) -> None:
        with self.owner._lock:
            self.owner._connections.discard(self.connection)
        super().finish()

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        owner, method, path = self.owner, self.command, self.path
        body = self._body()
        outage, starts = owner._outage(method, path)
        if outage is not None:
            if starts and outage.forward:
                try:
                    owner._forward(method, path, self._headers(), body)
                except OSError:
                    pass
            owner._record(method, path, 0, True)  # status 0: no answer at all
            self.close_connection = True  # returning without a response: the client sees the connection drop
            return
        fault = owner._take_fault(method, path)
        if fault is not None and fault.forward:
            try:
                owner._forward(method, path, self._headers(), body)
            except OSError:
                pass  # the answer is injected anyway
        if fault is not None:
            owner._record(method, path, fault.status, True)
            self._answer(fault.status, [("Content-Type", "text/plain")], fault.body)
            return
        try:
            status, headers, data = owner._forward(method, path, self._headers(), body)
        except OSError as exc:
            # The target is down: what a reverse proxy says then.
            owner._record(method, path, 502, False)
            self._answer(502, [("Content-Type", "text/plain")], f"fault proxy: target unreachable: {exc}".encode())
            return
        owner._record(method, path, status, False)
        self._answer(status, headers, data)

    def _headers(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


def assert_completed_in_one_run(campaign: Any, *, last_round: int, participants: int) -> None:
    """A fault the platform rode through without a new attempt: one attempt, one Flower run, every round once,
    all `participants` nodes in the last round, and a release."""
    attempts = list(campaign.attempts.order_by("number"))
    assert [(a.number, a.outcome, a.from_round) for a in attempts] == [(1, "completed", 0)]
    assert attempts[0].flwr_run_id == campaign.flwr_run_id
    numbers = list(campaign.rounds.order_by("number").values_list("number", flat=True))
    assert round_numbers_problems(numbers, expected_last=last_round) == []
    last = campaign.rounds.get(number=last_round)
    assert last.participants == participants, list(last.participations.values_list("node__name", "error"))
    assert campaign.release is not None
