"""A home connection in userspace: two TAP devices joined by a process that delays, drops and rate-limits frames.

Why not `tc qdisc … netem`: the kernels these tests run on may lack the netem module (this machine's answers
"Specified qdisc kind is unknown" for netem while tbf and htb work), and a test that needs a module the CI kernel
lacks would only ever skip. A TAP pair carries whole Ethernet frames (ARP included), so the namespaces on either
side see one plain network link; this process is the cable between them:

- up (node → network): `delay_ms` ± `jitter_ms` one way (uniform), `loss` of the frames dropped at random, and at
  most `up_mbit` Mbit/s with a `queue_ms` drop-tail queue — what `tc qdisc add dev eth0 root netem delay 60ms 10ms
  loss 0.5% rate 20mbit` does on a node's uplink;
- down (network → node): `down_mbit` Mbit/s, no added delay or loss (netem on one side shapes its egress only).

Frames leave in the order they came (netem with `rate` keeps order too): jitter without reordering.
Run as a script (`python wanlink.py --a TAP --b TAP …`); it creates both TAP devices, prints "ready", and the
caller moves them into their namespaces (a TAP's file descriptor keeps working across the move). SIGTERM stops it.
The byte counters of the TAP devices (`ip -s link`) count what crossed the link.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MAX_FRAME = 65536


def open_tap(name: str) -> int:
    """A new TAP device `name` (≤ 15 characters), non-blocking; closing the descriptor removes the device."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class Direction:
    """One direction of the link: a drop-tail queue drained at `mbit`, then a one-way delay, order kept."""

    def __init__(
        self, *, mbit: float, delay_ms: float, jitter_ms: float, loss: float, queue_ms: float, rng: random.Random
    ) -> None:
        self.bits_per_second = mbit * 1e6
        self.delay, self.jitter, self.loss = delay_ms / 1000, jitter_ms / 1000, loss
        self.queue_limit = queue_ms / 1000
        self.rng = rng
        self.link_free = 0.0  # when the last queued frame has been serialised
        self.last_release = 0.0
        self.pending: collections.deque[tuple[float, bytes]] = collections.deque()
        self.dropped = 0

    def take(self, frame: bytes, now: float) -> None:
        if self.loss and self.rng.random() < self.loss:
            self.dropped += 1
            return
        start = max(now, self.link_free)
        if start - now > self.queue_limit:  # the modem's buffer is full: drop-tail
            self.dropped += 1
            return
        self.link_free = start + len(frame) * 8 / self.bits_per_second
        delay = max(0.0, self.delay + self.rng.uniform(-self.jitter, self.jitter))
        release = max(self.link_free + delay, self.last_release)
        self.last_release = release
        self.pending.append((release, frame))

    def due(self, now: float) -> list[bytes]:
        out = []
        while self.pending and self.pending[0][0] <= now:
            out.append(self.pending.popleft()[1])
        return out

    def next_release(self) -> float | None:
        return self.pending[0][0] if self.pending else None


def _write(fd: int, frame: bytes) -> None:
    try:
        os.write(fd, frame)
    except OSError:
        pass  # the device is down (the link is cut) or its queue is full: the frame is lost, as on a real wire


def serve(a: int, b: int, up: Direction, down: Direction) -> None:
    """Frames read from `a` (the node's side) go up to `b`; frames from `b` come down to `a`."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    while not stop:
        now = time.monotonic()
        releases = [t for t in (up.next_release(), down.next_release()) if t is not None]
        timeout = max(0.0, min(releases) - now) if releases else 0.5
        try:
            readable, _, _ = select.select([a, b], [], [], min(timeout, 0.5))
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd in readable:
            for _ in range(64):  # drain what is there, bounded so the other side is not starved
                try:
                    frame = os.read(fd, MAX_FRAME)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break  # a device going down
                if not frame:
                    break
                (up if fd == a else down).take(frame, now)
        for frame in up.due(now):
            _write(b, frame)
        for frame in down.due(now):
            _write(a, frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="TAP device on the node's side")
    parser.add_argument("--b", required=True, help="TAP device on the network's side")
    parser.add_argument("--delay-ms", type=float, default=60.0)
    parser.add_argument("--jitter-ms", type=float, default=10.0)
    parser.add_argument("--loss", type=float, default=0.005, help="fraction of upstream frames dropped")
    parser.add_argument("--up-mbit", type=float, default=20.0)
    parser.add_argument("--down-mbit", type=float, default=100.0)
    parser.add_argument("--queue-ms", type=float, default=500.0, help="drop-tail queue, in ms at the link's rate")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    a, b = open_tap(args.a), open_tap(args.b)
    up = Direction(mbit=args.up_mbit, delay_ms=args.delay_ms, jitter_ms=args.jitter_ms, loss=args.loss,
                   queue_ms=args.queue_ms, rng=rng)  # fmt: skip
    down = Direction(mbit=args.down_mbit, delay_ms=0, jitter_ms=0, loss=0, queue_ms=args.queue_ms, rng=rng)
    print("ready", flush=True)
    serve(a, b, up, down)
    print(f"dropped up {up.dropped} down {down.dropped}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
