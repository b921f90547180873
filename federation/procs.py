"""Starting and stopping the real Flower processes (SuperLink, SuperNodes) and other helpers' processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


# How often a Flower process's SuperExec asks for a task to launch (an app process for a new run or message). Flower's
# default, 1 s, is paid on the critical path of every round: the slowest node's ClientApp starts up to 1 s late.
# - SuperNode: 0.2 s. Every message waits 0.1 s on average, and a round's slowest of N nodes at most 0.2 s. A poll is
#   one local request from the node's SuperExec to its own SuperNode, 5 a second per node; at 0.1 s, 50 nodes on one
#   host (make bench-scale) would spend a tenth of a core more just on polling, to save 0.1 s a round.
# - SuperLink: 0.1 s. It launches one ServerApp per campaign run, and it is one process on the platform's host.
# An operator's own FLWR_SUPEREXEC_TASK_POLL_INTERVAL (Flower checks it is within 0.01-60 s) wins over these.
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SUPERNODE_TASK_POLL_SECONDS = 0.2
SUPERLINK_TASK_POLL_SECONDS = 0.1


def flower_env(
    home: Path,
    extra: dict[str, str] | None = None,
    node_bin: Path | None = None,
    task_poll_seconds: float = SUPERNODE_TASK_POLL_SECONDS,
) -> dict[str, str]:
    """Environment for Flower processes: no telemetry, our own FLWR_HOME, `federation` importable, and the
    SuperExec's task poll (`task_poll_seconds`; the SuperLink passes SUPERLINK_TASK_POLL_SECONDS).

    `node_bin` (from `node_runtime_bin`) goes first on PATH: a SuperNode then runs our `flwr-clientapp`.
    """
    env = dict(os.environ)
    env.setdefault(TASK_POLL_ENV, str(task_poll_seconds))
    path = os.pathsep.join(str(p) for p in (node_bin, BIN) if p)
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_HOME=str(home),
        # flower-superexec and the app processes it spawns must come from this environment.
        PATH=f"{path}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


CLIENTAPP_WRAPPER = """#!/bin/sh
# Written by `python -m federation join|node`. Flower's SuperExec launches `flwr-clientapp` by PATH lookup; this
# node-private copy comes first on the SuperNode's PATH so that the node runs only the installed Bayanihan
# ClientApp, never app code from the wire (federation/node_runtime.py says why and how). Where a warm worker runs,
# its task launcher forks node_runtime for this message (`python -S`: a stdlib-only client, federation/task_launcher.py
# says why); otherwise that client execs node_runtime here.
PYTHONPATH={repo}${{PYTHONPATH:+:$PYTHONPATH}}
export PYTHONPATH
exec {python} -S -m federation.task_launcher "$@"
"""


def node_runtime_bin(home: Path) -> Path:
    """`home`/bin (0700) with our `flwr-clientapp`; put it first on the SuperNode's PATH (`flower_env(node_bin=)`)."""
    import shlex

    return write_clientapp_script(
        home, CLIENTAPP_WRAPPER.format(repo=shlex.quote(str(REPO_ROOT)), python=shlex.quote(sys.executable))
    )


def write_clientapp_script(home: Path, text: str) -> Path:
    """Write `text` as `home`/bin/flwr-clientapp (folder 0700, script 0700); returns the folder."""
    bin_dir = home / "bin"
    bin_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    bin_dir.chmod(0o700)
    tmp = bin_dir / ".flwr-clientapp.tmp"
    tmp.write_text(text)
    tmp.chmod(0o700)
    tmp.replace(bin_dir / "flwr-clientapp")  # atomic: a SuperNode already running never sees a half-written script
    return bin_dir


def superlink_command(state_dir: Path, host: str, port: int, tls: dict[str, Path] | None = None) -> list[str]:
    """With `tls` (ca/cert/key paths) the SuperLink serves HTTPS and admits only registered node keys.

    State is Flower's pure-Python in-memory store: its SQLite backends answer 'database is locked' (HTTP 500,
    retried by nobody) under CPU load, which ends nodes' fleet loops mid-campaign. Nothing survives a
    restart, node keys included: the platform's database is the source of truth and re-registers them
    (community.services.node_keys_sync). `state_dir` stays the working directory for Flower's files.
    """
    security = (
        ["--ssl-ca-certfile", str(tls["ca"]), "--ssl-certfile", str(tls["cert"]), "--ssl-keyfile", str(tls["key"]),
         "--enable-supernode-auth"]
        if tls else ["--insecure"]
    )  # fmt: skip
    return [
        str(BIN / "flower-superlink"),
        *security,
        "--database", ":flwr-in-memory:",
        "--host", host,
        "--port", str(port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip


def supernode_command(
    superlink: str,
    port: int,
    node_config: dict[str, str | int | float],
    root_cert: Path | None = None,
    private_key: Path | None = None,
) -> list[str]:
    # Node config is parsed as TOML values: JSON string quoting is valid TOML for plain strings.
    config = " ".join(f"{k}={json.dumps(v)}" for k, v in node_config.items())
    security = ["--root-certificates", str(root_cert)] if root_cert else ["--insecure"]
    if private_key:
        security += ["--auth-supernode-private-key", str(private_key)]
    return [
        str(BIN / "flower-supernode"),
        *security,
        "--superlink", superlink,
        "--port", str(port),
        "--node-config", config,
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        # Servers bind with SO_REUSEADDR: a port in TIME_WAIT from a previous run is free to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None, verify: str | bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before {url} answered")
        try:
            if requests.get(url, timeout=2, verify=verify).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def interrupt_on_signals() -> dict[int, Any]:
    """Make SIGTERM (a supervisor's stop, a CI timeout, `kill`) and SIGINT raise KeyboardInterrupt, as Ctrl-C does.

    Whoever started processes stops them in `finally` blocks and context managers (`Supervisor`, the platform's
    `running_platform`): a bare exit on SIGTERM would skip those and leave the children running (Linux's parent-death
    signal aside). SIGINT is set too because a shell starts background jobs with it ignored, and Python keeps it so:
    a supervisor's `kill -INT` would be lost. Returns the handlers it replaced, for `restore_signals`; outside the
    main thread (where Python allows no handlers) it changes nothing and returns {}.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, _interrupt) for signum in STOP_SIGNALS}


def restore_signals(previous: dict[int, Any]) -> None:
    """Put back what `interrupt_on_signals` replaced."""
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _stop_all(processes: list[psutil.Process], timeout: float) -> None:
    alive = [p for p in processes if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=timeout)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass


def _parent_death_signal(signum: int) -> Callable[[], None] | None:
    """A preexec_fn that makes the child receive `signum` when its parent dies (Linux `PR_SET_PDEATHSIG`).

    A supervisor killed with SIGKILL runs no cleanup: without this its SuperNode, SuperLink or worker lives on as
    an orphan. What those children start themselves (flower-superexec, app processes) is covered by
    Flower's own parent-pid monitors once their parent is gone. Elsewhere than Linux this is a no-op (None): only
    `Supervisor.stop`/`stop_all` stop children there. Note the kernel ties the signal to the *thread* that forked
    the child: start long-lived children from a thread that lives as long as the supervisor (the main thread).
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_death_signal() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signum)

    return set_death_signal


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass
class Supervisor:
    """Owns child processes, each known by a name; each runs in its own process group so its children stop with it.

    Callers go through the methods (`pid`, `running`, `returncode`, `names`, `restart`, `stop`, `stop_many`), not
    `procs`: a child that was stopped or restarted is then never mistaken for the one running now.

    Children also die with the supervising process itself, even when it is killed with SIGKILL (Linux):
    `death_signal` is sent to them by the kernel (SIGTERM lets a SuperNode deactivate cleanly).
    """

    log_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    death_signal: int = signal.SIGTERM
    # How each name was first started (command, env, cwd): `restart` starts the same again, whoever calls it.
    _started: dict[str, tuple[list[str], dict[str, str] | None, Path | None]] = field(
        default_factory=dict, init=False, repr=False
    )

    def start(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_parent_death_signal(self.death_signal),
        )
        log.close()  # the child holds its own descriptor
        self.procs[name] = proc
        self._started[name] = (list(cmd), env, cwd)
        return proc

    def pid(self, name: str) -> int | None:
        """The pid of the child started as `name` (alive or exited, until it is stopped); None when there is none."""
        proc = self.procs.get(name)
        return proc.pid if proc is not None else None

    def returncode(self, name: str) -> int | None:
        """Its exit code once it has exited; None while it runs or when there is no such child."""
        proc = self.procs.get(name)
        return proc.poll() if proc is not None else None

    def running(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def names(self, prefix: str = "") -> list[str]:
        """The children not stopped yet (running or exited), in the order they were started."""
        return [name for name in self.procs if name.startswith(prefix)]

    def restart(self, name: str, timeout: float = 20.0) -> subprocess.Popen:
        """Stop `name` (if it still runs) and start it again with the command, environment and folder it was first
        started with; its log goes on in the same file."""
        if name not in self._started:
            raise KeyError(f"{name} was never started: nothing to restart")
        cmd, env, cwd = self._started[name]
        self.stop(name, timeout)
        return self.start(name, cmd, env=env, cwd=cwd)

    def check(self) -> None:
        """Raise if any child has died, naming it and the tail of its log."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = self.tail(name)
                raise RuntimeError(f"{name} exited with code {proc.returncode}; last log lines:\n{tail}")

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, name: str, timeout: float = 20.0) -> None:
        """Stop a child and its whole process group; children it left behind (app runtimes) go too."""
        self.stop_many([name], timeout)

    def stop_many(self, names: Iterable[str], timeout: float = 20.0) -> None:
        """Stop these children together: SIGTERM to every group at once, SIGKILL to the groups still there after
        `timeout`. A hundred SuperNodes then take one grace period, not a hundred in turn."""
        stopping = [proc for name in names if (proc := self.procs.pop(name, None)) is not None]
        # Flower starts some helpers (the SuperLink's flower-superexec) in a session of their own: the process group
        # does not reach them, so note every descendant now and stop those still alive at the end.
        descendants = [child for proc in stopping for child in _descendants(proc.pid)]
        for proc in stopping:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        waiting = stopping
        while waiting and time.monotonic() < deadline:
            waiting = [proc for proc in waiting if _group_alive(proc)]
            if waiting:
                time.sleep(0.1)
        for proc in waiting:
            if _group_alive(proc):
                _signal_group(proc, signal.SIGKILL)
        for proc in stopping:
            proc.wait()
        if descendants:
            _stop_all(descendants, max(deadline - time.monotonic(), 2.0))

    def stop_all(self, timeout: float = 20.0) -> None:
        """Every child, the last started first (nodes before the SuperLink they dial, a proxy before its upstream)."""
        for name in reversed(list(self.procs)):
            self.stop(name, timeout)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def _group_alive(proc: subprocess.Popen) -> bool:
    """Whether anyone is left in the child's process group (the child itself reaped when it has exited)."""
    proc.poll()
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True
