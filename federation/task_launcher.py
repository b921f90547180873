"""The node's task launcher: Flower's per-message `flwr-clientapp` becomes a fork of a process already started.

Why: Flower 1.42's SuperExec starts a fresh `flwr-clientapp` for every message. Ours (node_runtime) hands
the job to the warm worker, but the process itself still pays Python's start and Flower's imports, about 0.8 CPU-s,
before its first task heartbeat. Flower re-queues a task that does not heartbeat within 30 s of its claim and starts
another process without stopping the first; 50 nodes training at once on a 2-core machine missed that, the
relaunches piled up and memory ran out. Here the per-message process is a stdlib-only client (`python -S`, tens of
milliseconds) and the work node_runtime does per message — pull the task, check the FAB, heartbeat, hand the job to
the warm worker, push the reply — runs in a fork of this launcher, which has Flower and node_runtime imported once.

    SuperExec ─ exec ─> bin/flwr-clientapp (client(): argv, env, cwd and its stdin/out/err fds over a 0600 socket)
                              │  waits; forwards SIGTERM/SIGINT/SIGHUP; exits with the task's exit code
    launcher (serve()) ─ fork per request ─> child: the client's fds, env, cwd; node_runtime.main(argv); _exit

- What the child runs is the installed node_runtime.main, the same code the client would otherwise exec: a node
  still runs only the app it agreed to (the FAB check is in node_runtime). Nothing from the socket is code: argv goes
  to node_runtime's copy of Flower's flwr-clientapp parser, env and cwd are the client's own.
- Fork, not threads: Flower's runtime keeps per-process globals (TaskIdentity, its exit handlers, signal handlers),
  so one task per process, as Flower has it. The launcher stays single-threaded so that forking it is safe; the warm
  worker (which runs torch's threads) is never forked.
- The warm worker starts the launcher (`spawn`) before it imports torch, its socket next to the worker's, and starts
  it again if it exits; the launcher exits with the worker (PR_SET_PDEATHSIG). So wherever a warm worker runs (one per
  node under `join`, or one shared by many nodes) task starts are cheap, and the code forked is the code the worker
  started with: a changed install still reaches the worker as a different code fingerprint (each child reads it
  from disk), the worker refuses and exits, `join` restarts it, and the new worker starts a new launcher.
- No launcher (no warm worker, it is restarting, or the socket is refused): the client execs the cold shim
  (`python -m federation.node_runtime`), exactly what ran before; a launcher can never cost a round.
- If the client is killed, its task is stopped (SIGTERM to the child), as killing the task process would.

The module's top level imports only the standard library: the client runs under `python -S` on every message.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

# Stdlib-only at import time too, like this module: the per-message client stays light.
from federation.warm_protocol import recv_exact, short_address

PROTOCOL = 1
SOCKET_NAME = "launch.sock"  # beside the warm worker's warm.sock, in the same private folder
STATUS_FILE = "task-launcher.json"
ENV_WARM_SOCKET = "BAYANIHAN_WARM_SOCKET"  # = warm_protocol.ENV_SOCKET (a test pins it): not imported, to stay light
ENV_LAUNCHER = "BAYANIHAN_TASK_LAUNCHER"  # "0": never use the launcher (the client always execs the cold shim)
TARGET = "federation.node_runtime:main"
MAX_REQUEST = 1 << 20  # argv + env of a flwr-clientapp: a few KB
_LEN = struct.Struct(">I")
_FD_MARK = b"F"  # the one byte that carries the client's stdin/stdout/stderr (SCM_RIGHTS)
REQUEST_TIMEOUT = 5.0  # seconds a connected client has to send its request


def socket_for(warm_socket: str | Path) -> Path:
    """The launcher's socket for the warm worker listening on `warm_socket`."""
    return Path(warm_socket).parent / SOCKET_NAME


# --- Framing (both sides) ------------------------------------------------------------------------------------------


def _send(sock: socket.socket, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    sock.sendall(_LEN.pack(len(raw)) + raw)


def _recv(sock: socket.socket) -> dict[str, Any]:
    (size,) = _LEN.unpack(recv_exact(sock, _LEN.size))
    if size > MAX_REQUEST:
        raise ValueError(f"frame of {size} bytes is over the {MAX_REQUEST}-byte limit")
    body = json.loads(recv_exact(sock, size))
    if not isinstance(body, dict):
        raise ValueError("frame is not a JSON object")
    return body


# --- The client: what Flower's SuperExec starts for every message --------------------------------------------------


def _exec_cold(argv: list[str], why: str) -> None:
    """Run the task in this process the way it ran before the launcher (node_runtime, full imports)."""
    if why:
        print(f"federation.task_launcher: {why}; starting the task in its own process", file=sys.stderr, flush=True)
    python = sys.executable
    os.execv(python, [python, "-m", "federation.node_runtime", *argv])


def client(argv: list[str]) -> int:
    """Hand this flwr-clientapp invocation to the launcher and wait for the task's exit code."""
    warm = os.environ.get(ENV_WARM_SOCKET)
    if not warm or os.environ.get(ENV_LAUNCHER) == "0":
        _exec_cold(argv, "")
    path = socket_for(warm)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    address, fd = short_address(path) if path.parent.is_dir() else (str(path), None)
    try:
        sock.connect(address)
    except OSError as exc:
        sock.close()
        # The worker is (re)starting or runs without a launcher: nothing lost, the task runs as it did before.
        _exec_cold(argv, "" if isinstance(exc, FileNotFoundError) else f"launcher at {path}: {exc.strerror}")
    finally:
        if fd is not None:
            os.close(fd)
    # A signal that comes before the task has started is held and passed on once it has (or acted on here, if the
    # task ends up started by this process after all).
    held: list[int] = []
    started = [False]

    def forward(signum: int, frame: object) -> None:
        if not started[0]:
            held.append(signum)
            return
        try:
            _send(sock, {"signal": signum})
        except OSError:
            pass

    relayed = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for signum in relayed:
        signal.signal(signum, forward)
    try:
        socket.send_fds(sock, [_FD_MARK], [0, 1, 2])
        _send(sock, {"protocol": PROTOCOL, "argv": argv, "env": dict(os.environ), "cwd": os.getcwd()})
        answer = _recv(sock)
        if "fallback" in answer:
            raise ValueError(answer["fallback"])
    except (OSError, EOFError, ValueError) as exc:
        sock.close()
        for signum in relayed:
            signal.signal(signum, signal.SIG_DFL)
        if held:
            os.kill(os.getpid(), held[0])  # it was meant for the task: end here, as the task would have
        _exec_cold(argv, f"launcher at {path} did not take the task ({exc})")
    started[0] = True
    for signum in held:
        forward(signum, None)
    while True:
        try:
            answer = _recv(sock)
        except InterruptedError:
            continue
        except (OSError, EOFError, ValueError) as exc:
            pid = answer.get("started")
            print(f"federation.task_launcher: lost the launcher while task process {pid} ran ({exc}); that "
                  "process goes on and reports to Flower itself", file=sys.stderr, flush=True)  # fmt: skip
            return 1
        if "exit" in answer:
            return int(answer["exit"])


# --- The launcher ----------------------------------------------------------------------------------------------


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


def _resolve(target: str) -> Any:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class Launcher:
    """Serves `path` in one thread: each request is forked into a child running `target(argv)`."""

    def __init__(self, path: Path, target: str = TARGET) -> None:
        self.path = Path(path)
        self.target = target
        self.children: dict[int, socket.socket | None] = {}  # child pid -> its client's connection (None: gone)
        self.pending: dict[socket.socket, float] = {}  # accepted, request not read yet -> deadline (monotonic)
        self.counts = {"launched": 0, "fallback": 0, "signals": 0, "clients_gone": 0}
        self.started_at = time.time()
        self.listener: socket.socket | None = None
        self.inode = -1

    def prepare(self) -> None:
        """Import what every task needs, once, before the first fork."""
        entry = _resolve(self.target)
        if self.target == TARGET:
            from federation import node_runtime, warm_protocol

            assert warm_protocol.ENV_SOCKET == ENV_WARM_SOCKET
            node_runtime.self_test(compare_cli=False)
            _preimport_runtime()
        self._entry = entry

    def bind(self) -> None:
        folder = self.path.parent
        mode = folder.stat().st_mode & 0o777
        if mode & 0o077:
            raise SystemExit(f"task launcher: {folder} must be private (chmod 700), it is {oct(mode)}")
        address, fd = short_address(self.path)
        try:
            self.path.unlink(missing_ok=True)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                listener.bind(address)
            finally:
                os.umask(old)
            listener.listen(256)
        finally:
            if fd is not None:
                os.close(fd)
        self.listener = listener
        self.inode = self.path.stat().st_ino

    def unlink(self) -> None:
        """Remove our socket file, unless another launcher has bound the path since."""
        try:
            if self.path.stat().st_ino == self.inode:
                self.path.unlink()
        except FileNotFoundError:
            pass

    def serve_forever(self, stop: list[bool] | None = None) -> None:
        import selectors

        assert self.listener is not None
        stop = stop if stop is not None else [False]
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that SIGCHLD writes to the wakeup fd
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ, "accept")
        selector.register(wake_r, selectors.EVENT_READ, "wake")
        self._selector = selector
        self._write_status()
        while not stop[0]:
            for key, _ in selector.select(timeout=1.0):
                if key.data == "accept":
                    self._accept()
                elif key.data == "request":
                    self._launch(key.fileobj)  # type: ignore[arg-type]
                elif key.data == "wake":
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        pass
                else:
                    self._from_client(key.fileobj, key.data)  # type: ignore[arg-type]
            self._reap()
            self._expire_pending()

    def _accept(self) -> None:
        """Take a connection; its request is read once it has arrived (one slow client never holds up the rest)."""
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.pending[conn] = time.monotonic() + REQUEST_TIMEOUT
        self._selector.register(conn, 1, "request")  # EVENT_READ

    def _expire_pending(self) -> None:
        now = time.monotonic()
        for conn in [c for c, deadline in self.pending.items() if deadline < now]:
            self._refuse(conn, [], f"no request within {REQUEST_TIMEOUT:.0f}s")

    def _refuse(self, conn: socket.socket, fds: list[int], reason: str) -> None:
        """The client starts the task itself (cold), as if there were no launcher."""
        self.pending.pop(conn, None)
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        self.counts["fallback"] += 1
        self._write_status()  # before the answer: whoever reads the status after it sees this refusal counted
        try:
            conn.settimeout(1.0)
            _send(conn, {"fallback": reason})
        except OSError:
            pass
        conn.close()
        for fd in fds:
            os.close(fd)

    def _launch(self, conn: socket.socket) -> None:
        """Read the request that has arrived on `conn` and fork its task."""
        fds: list[int] = []
        try:
            conn.settimeout(REQUEST_TIMEOUT)  # the rest of a request that has begun follows within milliseconds
            _, fds, _, _ = socket.recv_fds(conn, 1, 3)
            request = _recv(conn)
            if request.get("protocol") != PROTOCOL or len(fds) != 3:
                raise ValueError(f"protocol {request.get('protocol')!r} with {len(fds)} fds, want {PROTOCOL} with 3")
            argv, env, cwd = request["argv"], request["env"], request["cwd"]
            if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
                raise ValueError("argv is not a list of strings")
            if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
                raise ValueError("env is not a mapping of strings")
            if not isinstance(cwd, str):
                raise ValueError("cwd is not a string")
        except (OSError, EOFError, ValueError, KeyError) as exc:
            self._refuse(conn, fds, f"bad request: {exc}")
            return
        self.pending.pop(conn, None)
        self._selector.unregister(conn)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the task process; never returns
            self._child(conn, fds, argv, env, cwd)
        for fd in fds:
            os.close(fd)
        conn.settimeout(1.0)
        self.children[pid] = conn
        self.counts["launched"] += 1
        try:
            _send(conn, {"started": pid})
            self._selector.register(conn, 1, pid)  # EVENT_READ: a signal to forward, or the client gone
        except (OSError, ValueError):  # the client died while its task was being forked: the task stops too
            self.counts["clients_gone"] += 1
            self._client_gone(pid)
            _kill(pid, signal.SIGTERM)
        self._write_status()

    def _child(self, conn: socket.socket, fds: list[int], argv: list[str], env: dict[str, str], cwd: str) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            self._selector.close()
            for other in (self.listener, conn, *self.pending, *(c for c in self.children.values() if c is not None)):
                other.close()
            for target_fd, fd in enumerate(fds):
                os.dup2(fd, target_fd)
                os.close(fd)
            os.environ.clear()
            os.environ.update(env)
            try:
                os.chdir(cwd)
            except OSError:
                pass
            sys.argv = ["flwr-clientapp", *argv]
            _forget_caches()
            result = self._entry(argv)
            code = result if isinstance(result, int) else 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - the child must never return into the launcher's loop
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _from_client(self, conn: socket.socket, pid: int) -> None:
        try:
            body = _recv(conn)
        except (OSError, EOFError, ValueError):
            self.counts["clients_gone"] += 1
            self._client_gone(pid)
            self._write_status()
            _kill(pid, signal.SIGTERM)  # as killing the task process would: the task stops
            return
        signum = body.get("signal")
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.counts["signals"] += 1
            _kill(pid, signum)

    def _client_gone(self, pid: int) -> None:
        conn = self.children.get(pid)
        if conn is not None:
            try:
                self._selector.unregister(conn)
            except (KeyError, ValueError):
                pass
            conn.close()
            self.children[pid] = None

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.children:
                continue
            conn = self.children[pid]
            if conn is not None:
                try:
                    _send(conn, {"exit": _exit_code(status)})
                except OSError:
                    pass
                self._client_gone(pid)
            del self.children[pid]
            self._write_status()

    def _write_status(self) -> None:
        body = {"pid": os.getpid(), "started_at": self.started_at, "tasks": self.counts,
                "running": sorted(self.children)}  # fmt: skip
        path = self.path.parent / STATUS_FILE
        tmp = path.with_name(f".{STATUS_FILE}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
        tmp.replace(path)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _preimport_runtime() -> None:
    """The modules node_runtime.main() imports inside itself (its per-message path keeps them lazy)."""
    import flwr.app  # noqa: F401
    import flwr.app.error  # noqa: F401
    import flwr.common.args  # noqa: F401
    import flwr.supercore.app_utils  # noqa: F401
    import flwr.supercore.exit  # noqa: F401
    import flwr.supercore.heartbeat  # noqa: F401
    import flwr.supercore.interceptors  # noqa: F401
    import flwr.supercore.retry  # noqa: F401
    import flwr.supercore.runtime  # noqa: F401
    import flwr.supercore.runtime.tracing  # noqa: F401
    import flwr.supercore.telemetry  # noqa: F401
    import flwr.supercore.tls  # noqa: F401
    import flwr.supernode.runtime.run_clientapp  # noqa: F401
    import psutil  # noqa: F401 - warm_protocol.launched_at

    from federation import warm_protocol

    warm_protocol.code_fingerprint()  # imports what it needs (the FAB builder); the child reads it afresh


def _forget_caches() -> None:
    """In a child: the installed code is read from disk again, as a freshly started shim would."""
    if "federation.warm_protocol" in sys.modules:
        sys.modules["federation.warm_protocol"].code_fingerprint.cache_clear()
    if "federation.node_runtime" in sys.modules:
        sys.modules["federation.node_runtime"].shipped_app.cache_clear()


# --- Starting and running it -------------------------------------------------------------------------------------


def spawn(warm_socket: Path) -> Any:
    """Start the launcher for the warm worker listening on `warm_socket` (called by the worker, in its process)."""
    import subprocess

    return subprocess.Popen(
        [sys.executable, "-m", "federation.task_launcher", "serve", str(socket_for(warm_socket)),
         "--parent-pid", str(os.getpid())],
    )  # fmt: skip


def _die_with(parent_pid: int) -> None:
    """PR_SET_PDEATHSIG: SIGTERM when the warm worker that started us exits (even by SIGKILL)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # it exited before the prctl took effect
        raise SystemExit(0)


def serve(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m federation.task_launcher serve", description=__doc__.splitlines()[0]
    )
    parser.add_argument("socket", help="where to listen (a private folder: the warm worker's)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (the warm worker) exits")
    args = parser.parse_args(argv)
    if args.parent_pid:
        _die_with(args.parent_pid)
    stop = [False]

    def finish(signum: int, frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    launcher = Launcher(Path(args.socket))
    launcher.prepare()
    launcher.bind()
    print(time.strftime("%H:%M:%S"), f"task launcher {os.getpid()} listening on {launcher.path}", flush=True)
    try:
        launcher.serve_forever(stop)
    finally:
        # Tasks already forked go on (they report to Flower themselves); new ones start cold until a launcher is back.
        launcher.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    return client(argv)  # Flower's flwr-clientapp arguments all start with "--"


if __name__ == "__main__":
    sys.exit(main())
