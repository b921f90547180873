"""The channel between a node's per-message `flwr-clientapp` (federation.node_runtime) and its warm worker.

One typed home for both sides (federation.warm_worker serves it, node_runtime.run_job calls `submit`): a 0600
Unix socket in the node's home, one connection per job, length-prefixed frames with a bounded size.

    shim → worker:  header (JSON: protocol, message id, federation version, code fingerprint, launch time)
                    + Message (Flower's own protobuf serde) + Context (same)
    worker → shim:  header (JSON: ok, reason, attached) + reply Message (empty when not ok)

The shim then waits with the socket open; closing it (the shim was killed) tells the worker nobody waits any more.
Nothing here imports torch: the shim's path stays light. What crosses is data only — the worker runs the ClientApp
installed on this node, and refuses a shim whose installed code differs from its own (`code_fingerprint`).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

PROTOCOL = 1
ENV_SOCKET = "BAYANIHAN_WARM_SOCKET"  # set by `join` in the SuperNode's env; every flwr-clientapp inherits it
ENV_CONNECT_WAIT = "BAYANIHAN_WARM_CONNECT_WAIT"  # seconds a shim waits for a (re)starting worker; default 30
SOCKET_NAME = "warm.sock"
MAX_HEADER = 64 << 10
MAX_FRAME = 1 << 30  # a Message with a LoRA adapter is a few MB; a bigger frame is a bug or an attack
_LEN = struct.Struct(">Q")
UNAVAILABLE = "warm worker unavailable: "
STALE = "the node's code changed since its warm worker started: restart join"


class ChannelError(Exception):
    """The other side broke the framing (too big, truncated, not our header)."""


class WarmUnavailable(RuntimeError):
    """The shim could not hand its job over or get the reply; `str()` starts with UNAVAILABLE."""


class WarmJobFailed(RuntimeError):
    """The worker ran (or refused) the job and reports why it has no reply."""


# --- Framing --------------------------------------------------------------------------------------------------


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_LEN.pack(len(payload)) + payload)


def recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError(f"connection closed with {left} of {size} bytes unread")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, limit: int = MAX_FRAME) -> bytes:
    (size,) = _LEN.unpack(recv_exact(sock, _LEN.size))
    if size > limit:
        raise ChannelError(f"frame of {size} bytes exceeds the limit of {limit}")
    return recv_exact(sock, size)


# --- What crosses -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobHeader:
    message_id: str  # Flower's message id: a relaunched task carries the same one
    federation: str  # the installed federation version of the shim
    code: str  # code_fingerprint() of the shim
    launched_at: float  # epoch seconds the shim's process started (startup-seconds is measured from it)
    protocol: int = PROTOCOL

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, raw: bytes) -> JobHeader:
        try:
            body = json.loads(raw)
            header = cls(
                message_id=str(body["message_id"]), federation=str(body["federation"]), code=str(body["code"]),
                launched_at=float(body["launched_at"]), protocol=int(body["protocol"]),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            raise ChannelError(f"not a job header: {exc}") from None
        if not header.message_id or len(header.message_id) > 256:
            raise ChannelError("job header: message id must be 1-256 characters")
        return header


@dataclass(frozen=True)
class ReplyHeader:
    ok: bool
    reason: str = ""  # why there is no reply (ok False)
    attached: bool = False  # this shim joined a job another shim had started

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, raw: bytes) -> ReplyHeader:
        try:
            body = json.loads(raw)
            return cls(ok=bool(body["ok"]), reason=str(body["reason"])[:4000], attached=bool(body["attached"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ChannelError(f"not a reply header: {exc}") from None


def encode_message(message: Any) -> bytes:
    from flwr.common.serde import message_to_proto

    return message_to_proto(message).SerializeToString()


def decode_message(raw: bytes) -> Any:
    from flwr.common.serde import message_from_proto
    from flwr.proto.message_pb2 import Message as MessageProto

    try:
        return message_from_proto(MessageProto.FromString(raw))
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise ChannelError(f"not a Flower message: {exc}") from None


def encode_context(context: Any) -> bytes:
    from flwr.common.serde import context_to_proto

    return context_to_proto(context).SerializeToString()


def decode_context(raw: bytes) -> Any:
    from flwr.common.serde import context_from_proto
    from flwr.proto.message_pb2 import Context as ContextProto

    try:
        return context_from_proto(ContextProto.FromString(raw))
    except Exception as exc:  # noqa: BLE001
        raise ChannelError(f"not a Flower context: {exc}") from None


# --- Which code is this --------------------------------------------------------------------------------------


def federation_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("bayanihan-federation")
    except metadata.PackageNotFoundError:
        return "source"


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 over the installed app's files (node_runtime.shipped_app) and every `federation` source file.

    Computed from disk: a shim (a fresh process) sees the code installed now, a worker what was installed when it
    started. Different → the node's code changed under a running worker.
    """
    from federation.node_runtime import shipped_app

    digest = hashlib.sha256()
    app = shipped_app()
    digest.update(json.dumps([app.fab_id, sorted(app.files.items())]).encode())
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# --- Where the socket lives --------------------------------------------------------------------------------------


def socket_path(home: Path) -> Path:
    return Path(home) / SOCKET_NAME


def short_address(path: Path) -> tuple[str, int | None]:
    """An address for bind/connect within the 107-byte limit of AF_UNIX: the path itself, or the same file through
    an O_PATH descriptor of its folder (`/proc/self/fd/N/name`, Linux) when the path is longer. Returns the
    descriptor to close afterwards (or None)."""
    text = str(path)
    if len(os.fsencode(text)) < 100:
        return text, None
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{path.name}", fd


# --- The shim's side ---------------------------------------------------------------------------------------------

# When the process Flower launched for this message started. The warm worker sets it around a job (the shim's
# start, sent in the header); elsewhere it is this process's own start. client_app's startup-seconds reads it.
_launched_at: contextvars.ContextVar[float | None] = contextvars.ContextVar("launched_at", default=None)


@contextlib.contextmanager
def launched(at: float) -> Iterator[None]:
    """Within this block (the worker running a shim's job), launched_at() is `at`."""
    token = _launched_at.set(at)
    try:
        yield
    finally:
        _launched_at.reset(token)


def launched_at() -> float:
    value = _launched_at.get()
    if value is not None:
        return value
    import psutil

    return psutil.Process().create_time()


def _connect(path: Path, wait: float) -> socket.socket:
    """Connect, retrying while the worker is (re)starting (no socket yet, or nobody listening) for `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address, fd = short_address(path) if path.parent.is_dir() else (str(path), None)
        try:
            sock.connect(address)
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if time.monotonic() >= deadline:
                raise WarmUnavailable(
                    f"{UNAVAILABLE}nothing answers on {path} ({exc.strerror}) after {wait:.0f}s; "
                    "is `join` running? it starts and restarts the worker"
                ) from None
            time.sleep(0.5)
        except OSError as exc:
            sock.close()
            raise WarmUnavailable(f"{UNAVAILABLE}cannot connect to {path}: {exc}") from None
        finally:
            if fd is not None:
                os.close(fd)


def submit(path: Path, message: Any, context: Any, *, launched: float | None = None,
           wait: float | None = None) -> tuple[Any, bool]:  # fmt: skip
    """Hand one job to the warm worker and wait for its reply Message; returns (reply, attached).

    Raises WarmUnavailable when the worker cannot be reached or goes away before replying (never hangs on a dead
    worker: its socket closes), WarmJobFailed when it answers without a reply (refused, failed, cancelled).
    """
    if wait is None:
        wait = float(os.environ.get(ENV_CONNECT_WAIT, "30"))
    header = JobHeader(
        message_id=str(message.metadata.message_id), federation=federation_version(), code=code_fingerprint(),
        launched_at=launched if launched is not None else launched_at(),
    )  # fmt: skip
    body = [header.encode(), encode_message(message), encode_context(context)]
    sock = _connect(Path(path), wait)
    try:
        try:
            for frame in body:
                send_frame(sock, frame)
            answer = ReplyHeader.decode(recv_frame(sock, MAX_HEADER))
            reply = recv_frame(sock)
        except (EOFError, ConnectionError) as exc:
            raise WarmUnavailable(
                f"{UNAVAILABLE}the worker closed the connection before replying ({exc}); "
                "it probably died: `join` restarts it, see its log (logs/warm-worker.log in the node's home)"
            ) from None
        except ChannelError as exc:
            raise WarmUnavailable(f"{UNAVAILABLE}garbled answer: {exc}") from None
    finally:
        sock.close()
    if not answer.ok:
        raise WarmJobFailed(f"warm worker: {answer.reason}")
    return decode_message(reply), answer.attached
