"""Several hosts on one machine, for tests: network namespaces joined by a bridge, nodes behind shaped home links.

Test tooling only (never imported by the product). A `Hosts` names its namespaces after a random tag, so two test
runs on one machine never share one, and `close()` ends every process inside them (`ip netns pids`) before it
deletes them: veths and the bridge go with their namespaces, TAP devices with the link processes that own them.
Nothing is created in the machine's own network namespace; only addresses inside the namespaces made here are used.

Layout (what docs/deploy.md describes for real machines):

    public network 10.213.0.0/24, a bridge in the `wan` namespace
      site  10.213.0.2   web over HTTPS (and, on loopback inside it, PostgreSQL and Redis)
      link  10.213.0.3   the Fleet-only proxy (Caddy) in front of the SuperLink
      node-N 10.213.0.1N each behind a shaped home link (wanlink.py)
    private network 10.213.1.0/24 between site and link only (a veth pair)
      site  10.213.1.2   the Celery worker and web reach the SuperLink's Control API here
      link  10.213.1.3   the SuperLink itself (Fleet, Control and Runtime APIs on one port)
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

WANLINK = Path(__file__).with_name("wanlink.py")
PUBLIC = "10.213.0"
PRIVATE = "10.213.1"


def _run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def postgres_bin() -> Path | None:
    """The newest PostgreSQL server binaries Debian installed (/usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def unavailable() -> str | None:
    """Why this machine cannot run the multi-host test, or None. Tries the real thing (a namespace and a TAP)."""
    if os.geteuid() != 0:
        return f"network namespaces need root (ip netns add); running as uid {os.geteuid()}"
    for tool in ("ip", "setpriv", "redis-server", "curl"):
        if not shutil.which(tool):
            return f"`{tool}` is not installed"
    if postgres_bin() is None:
        return "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no `postgres` user to run a private PostgreSQL as (it refuses to run as root)"
    probe = f"bhprobe{secrets.token_hex(3)}"
    added = _run("ip", "netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"`ip netns add` is not allowed here: {added.stderr.strip()}"
    try:
        tap = _run("ip", "netns", "exec", probe, "ip", "tuntap", "add", "dev", "t0", "mode", "tap", check=False)
        if tap.returncode != 0:
            return f"TAP devices cannot be made here (/dev/net/tun): {tap.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


@dataclass
class Shaping:
    """A home connection, as netem would be told on the node's uplink (wanlink.py says why not netem itself)."""

    delay_ms: float = 60.0
    jitter_ms: float = 10.0
    loss: float = 0.005
    up_mbit: float = 20.0
    down_mbit: float = 100.0

    def describe(self) -> str:
        return (f"{self.delay_ms:g} ms ± {self.jitter_ms:g} ms, {self.loss:.1%} loss, {self.up_mbit:g} Mbit/s up, "
                f"{self.down_mbit:g} Mbit/s down")  # fmt: skip


@dataclass
class Hosts:
    """The namespaces of one test: `site`, `link`, the `wan` bridge and one per node. Use as a context manager."""

    root: Path
    tag: str = field(default_factory=lambda: f"bh{secrets.token_hex(3)}")
    names: dict[str, str] = field(default_factory=dict)  # role → namespace
    links: dict[str, subprocess.Popen] = field(default_factory=dict)  # node → its wanlink process
    taps: dict[str, tuple[str, str]] = field(default_factory=dict)  # node → (its own TAP, the bridge's TAP)

    # -- addresses ------------------------------------------------------------------------------------------------

    site = f"{PUBLIC}.2"
    link = f"{PUBLIC}.3"
    site_private = f"{PRIVATE}.2"
    link_private = f"{PRIVATE}.3"

    def node_address(self, index: int) -> str:
        return f"{PUBLIC}.{10 + index}"

    # -- building -------------------------------------------------------------------------------------------------

    def ns(self, role: str) -> str:
        return self.names[role]

    def exec(self, role: str, argv: list[str]) -> list[str]:
        """`argv` run inside `role`'s namespace (ip netns exec replaces itself with the command: same pid)."""
        return ["ip", "netns", "exec", self.ns(role), *argv]

    def ip(self, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run("ip", "-n", self.ns(role), *args, check=check)

    def _add(self, role: str) -> None:
        name = f"{self.tag}-{role}"
        _run("ip", "netns", "add", name)
        self.names[role] = name
        self.ip(role, "link", "set", "lo", "up")

    def open(self) -> Hosts:
        self.root.mkdir(parents=True, exist_ok=True)
        for role in ("wan", "site", "link"):
            self._add(role)
        self.ip("wan", "link", "add", "br0", "type", "bridge")
        self.ip("wan", "link", "set", "br0", "up")
        for role, address in (("site", self.site), ("link", self.link)):
            # Made inside the namespaces (never in the machine's own), one end on the bridge.
            port = f"to-{role}"  # the bridge's end ("link" alone would read as a keyword of `ip link add`)
            self.ip("wan", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", self.ns(role))
            self.ip("wan", "link", "set", port, "master", "br0", "up")
            self.ip(role, "addr", "add", f"{address}/24", "dev", "eth0")
            self.ip(role, "link", "set", "eth0", "up")
        self.ip("site", "link", "add", "back0", "type", "veth", "peer", "name", "back0", "netns", self.ns("link"))
        for role, address in (("site", self.site_private), ("link", self.link_private)):
            self.ip(role, "addr", "add", f"{address}/24", "dev", "back0")
            self.ip(role, "link", "set", "back0", "up")
        return self

    def add_node(self, index: int, shaping: Shaping) -> str:
        """Namespace `node-<index>` on the public network through a shaped link; returns its address."""
        role = f"node-{index}"
        self._add(role)
        own, bridge = f"n{index}", f"n{index}w"
        log = (self.root / f"wanlink-{role}.log").open("ab")
        link = subprocess.Popen(
            self.exec("wan", [sys.executable, str(WANLINK), "--a", own, "--b", bridge,
                              "--delay-ms", str(shaping.delay_ms), "--jitter-ms", str(shaping.jitter_ms),
                              "--loss", str(shaping.loss), "--up-mbit", str(shaping.up_mbit),
                              "--down-mbit", str(shaping.down_mbit)]),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        log.close()
        self.links[role] = link
        self.taps[role] = (own, bridge)
        self._wait_device("wan", bridge, link)
        self.ip("wan", "link", "set", own, "netns", self.ns(role))  # the descriptor keeps working across the move
        self.ip("wan", "link", "set", bridge, "master", "br0", "up")
        address = self.node_address(index)
        self.ip(role, "addr", "add", f"{address}/24", "dev", own)
        self.ip(role, "link", "set", own, "up")
        return address

    def _wait_device(self, role: str, device: str, proc: subprocess.Popen, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.ip(role, "link", "show", device, check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the shaped link did not make {device}: {proc.poll()=}")
            time.sleep(0.1)

    # -- the links ------------------------------------------------------------------------------------------------

    def cut(self, node: str) -> None:
        """The node's line goes dead at the street: its frames are lost, nothing tells either side."""
        self.ip("wan", "link", "set", self.taps[node][1], "down")

    def restore(self, node: str) -> None:
        self.ip("wan", "link", "set", self.taps[node][1], "up")

    def counters(self, node: str) -> tuple[int, int]:
        """(bytes the node sent up, bytes it received) on its own end of the shaped link, as `ip -s link` counts."""
        text = self.ip(node, "-s", "link", "show", self.taps[node][0]).stdout
        rx = re.search(r"RX:.*\n\s*(\d+)", text)
        tx = re.search(r"TX:.*\n\s*(\d+)", text)
        if not rx or not tx:
            raise RuntimeError(f"cannot read the counters of {node}'s link:\n{text}")
        return int(tx.group(1)), int(rx.group(1))

    # -- the end --------------------------------------------------------------------------------------------------

    def pids(self) -> list[int]:
        found = []
        for name in self.names.values():
            result = _run("ip", "netns", "pids", name, check=False)
            found += [int(p) for p in result.stdout.split()]
        return found

    def close(self) -> list[str]:
        """End every process inside the namespaces, then delete them; returns the namespaces still listed."""
        for proc in self.links.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.links.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            psutil.wait_procs([p for p in (_process(pid) for pid in pids) if p], timeout=10)
        for name in reversed(list(self.names.values())):
            _run("ip", "netns", "del", name, check=False)
        return [n for n in _run("ip", "netns", "list").stdout.split() if n.startswith(self.tag)]

    def __enter__(self) -> Hosts:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


# --- A private PostgreSQL and Redis inside a namespace --------------------------------------------------------------


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb into a temp folder, run as the `postgres` user, which it
    insists on), listening on loopback inside its namespace and on a Unix socket the test process can use."""

    folder: Path
    port: int = 5432

    @property
    def socket_dir(self) -> Path:
        return self.folder / "socket"

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        owner = pwd.getpwnam("postgres")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        for path in (self.folder, self.socket_dir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
            path.chmod(0o700)
        _run(*as_postgres([str(postgres_bin() / "initdb"), "-D", str(self.folder / "data"), "-U", "postgres",
                           "-A", "trust", "-E", "UTF8", "--no-sync"]), timeout=120)  # fmt: skip

    def command(self) -> list[str]:
        return as_postgres(
            [str(postgres_bin() / "postgres"), "-D", str(self.folder / "data"), "-p", str(self.port),
             "-k", str(self.socket_dir), "-h", "127.0.0.1",
             # A throwaway cluster: durability buys nothing here and costs the 2 shared cores.
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        )  # fmt: skip

    def wait(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.query("postgres", "SELECT 1", check=False) is not None:
                return
            time.sleep(0.3)
        raise TimeoutError(f"PostgreSQL in {self.folder} did not answer within {timeout:.0f}s")

    def query(self, database: str, sql: str, params: tuple = (), check: bool = True) -> list[tuple] | None:
        import psycopg

        try:
            with psycopg.connect(host=str(self.socket_dir), port=self.port, user="postgres", dbname=database,
                                 autocommit=True, connect_timeout=5) as conn:  # fmt: skip
                cursor = conn.execute(sql, params)
                return cursor.fetchall() if cursor.description else []
        except psycopg.OperationalError:
            if check:
                raise
            return None


def as_postgres(argv: list[str]) -> list[str]:
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]


def redis_command(folder: Path, port: int = 6379) -> list[str]:
    """A Redis of the test's own on loopback inside its namespace, keeping nothing on disk."""
    return ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(folder), "--protected-mode", "yes"]  # fmt: skip


# --- Contributors' virtual environments ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ContributorVenvs:
    pythons: list[Path]
    seconds: float  # building the wheel and every venv, together

    def env(self, python: Path) -> dict[str, str]:
        """What a contributor's shell has: none of the platform's variables, nothing on PYTHONPATH."""
        drop = ("PYTHONPATH", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE", "DATABASE_URL", "BAYANIHAN_VAR")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
        return env


def build_contributor_venvs(repo: Path, folder: Path, count: int) -> ContributorVenvs:
    """`count` venvs, each `python -m venv` + `pip install` of this checkout's package, as a contributor makes one.

    The package is built into a wheel once (`pip wheel --no-deps .`, from a copy so the checkout gets no build/),
    then the venvs install that wheel side by side; pip takes torch==2.13.0 from the machine's local file and the
    rest from its cache, so only the first session on a machine downloads anything.
    """
    started = time.monotonic()
    src = folder / "src"
    src.mkdir(parents=True)
    shutil.copy2(repo / "pyproject.toml", src)
    shutil.copytree(repo / "federation", src / "federation", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = folder / "wheels"
    # --no-build-isolation: this environment's setuptools builds it (pyproject's build requirement) without a fresh
    # build environment being installed first.
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir",
         str(wheels), str(src), timeout=600)  # fmt: skip
    (wheel,) = wheels.glob("bayanihan_federation-*.whl")
    installs = []
    pythons = []
    for i in range(count):
        venv = folder / f"venv-{i + 1}"
        _run(sys.executable, "-m", "venv", str(venv), timeout=120)  # no system site-packages
        python = venv / "bin" / "python"
        pythons.append(python)
        # --no-compile: Python compiles what the node imports on first use instead of all of torch up front.
        installs.append(subprocess.Popen([str(python), "-m", "pip", "install", "--quiet", "--no-compile", str(wheel)],
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    for proc in installs:
        output, _ = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"pip install of {wheel.name} failed:\n{output[-3000:]}")
    return ContributorVenvs(pythons, time.monotonic() - started)


def private_tempdir(prefix: str) -> Path:
    """A temp folder outside pytest's (whose 0700 parents the `postgres` user cannot enter)."""
    return Path(tempfile.mkdtemp(prefix=prefix))
