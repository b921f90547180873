"""The platform's processes on one machine: SuperLink, web, Celery worker, and (for demos) SuperNodes."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from django.conf import settings

from federation import pki, procs
from stack import proxy, web_proxy
from stack.broker import Broker, cache_url, ensure_broker

PLATFORM_DIR = Path(settings.REPO_ROOT) / "platform"
LOOPBACK = "127.0.0.1"
log = logging.getLogger(__name__)


def superlink_tls() -> dict[str, Path]:
    """Given certificate files (SUPERLINK_CERT/KEY + CA) or the platform's own, made once under var/."""
    if settings.SUPERLINK_CERT and settings.SUPERLINK_KEY:
        return {
            "ca": Path(settings.SUPERLINK_ROOT_CERT),
            "cert": Path(settings.SUPERLINK_CERT),
            "key": Path(settings.SUPERLINK_KEY),
        }
    return pki.ensure_superlink_tls(Path(settings.SUPERLINK_TLS_DIR), settings.SUPERLINK_HOSTNAMES)


def platform_env(**overrides: str) -> dict[str, str]:
    """Environment for web and worker children: the same settings as this process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PLATFORM_DIR), str(settings.REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.setdefault("DJANGO_SETTINGS_MODULE", "bayanihan_site.settings")
    env["PATH"] = f"{procs.BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(overrides)
    return env


@dataclass
class Stack:
    """Starts what a campaign needs; `stop()` ends every process it started."""

    state_dir: Path
    supervisor: procs.Supervisor = field(init=False)
    _superlink_args: tuple[str, str] | None = field(default=None, init=False)
    _proxy_args: tuple[str, str] | None = field(default=None, init=False)
    _worker_env: dict[str, str] | None = field(default=None, init=False)
    web_socket: Path | None = field(default=None, init=False)  # where the web workers listen (the proxy's upstream)
    web_workers: int = field(default=0, init=False)
    _socket_tmp: Path | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.supervisor = procs.Supervisor(self.state_dir / "logs")

    def start_superlink(self, address: str, site_url: str | None = None) -> dict[str, Path]:
        """The SuperLink on loopback only (its Control and Runtime APIs have no authentication), with TLS
        and node authentication, state in memory; then the platform re-registers every admitted node key.

        `address` is the loopback Control address the platform uses (SUPERLINK_ADDRESS); nodes reach the SuperLink
        through the proxy (`start_proxy`). The ServerApp processes Flower starts inherit this environment: the path
        of the link secret and the site's URL reach them here, never through the run config nodes see.
        """
        port = int(address.rsplit(":", 1)[1])
        site_url = site_url or settings.SITE_URL
        superlink_dir = self.state_dir / "superlink"
        superlink_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # its state: node keys, runs, run configs
        tls = superlink_tls()
        secret_file = Path(settings.LINK_SECRET_FILE)
        pki.ensure_secret_file(secret_file)
        env = procs.flower_env(
            superlink_dir / "flwr-home",
            {"BAYANIHAN_LINK_SECRET_FILE": str(secret_file), "BAYANIHAN_SITE_URL": site_url},
            task_poll_seconds=procs.SUPERLINK_TASK_POLL_SECONDS,  # why: federation/procs.py
        )
        proc = self.supervisor.start(
            "superlink", procs.superlink_command(superlink_dir, LOOPBACK, port, tls), env=env, cwd=superlink_dir
        )
        procs.wait_http(f"https://{LOOPBACK}:{port}/health", 60, proc, verify=str(tls["ca"]))
        self._superlink_args = (address, site_url)
        self.sync_node_keys()
        return tls

    def sync_node_keys(self) -> Any:
        """Before nodes reconnect: the SuperLink admits exactly the platform's active nodes."""
        from community.services import node_keys_sync

        return node_keys_sync()

    def start_proxy(self, public_address: str, superlink_address: str) -> None:
        """Caddy on the public node address (bind host SUPERLINK_BIND), forwarding only the Fleet API and /health."""
        host, port = public_address.rsplit(":", 1)
        bind = settings.SUPERLINK_BIND or host
        folder = self.state_dir / "proxy"
        config = proxy.write_fleet_proxy_config(
            folder,
            listen=f"{bind}:{port}",
            upstream=f"{LOOPBACK}:{superlink_address.rsplit(':', 1)[1]}",
            tls=superlink_tls(),
            access_log=self.supervisor.log_dir / "proxy-access.log",
        )
        proc = self.supervisor.start("proxy", proxy.caddy_command(config), env=proxy.caddy_env(folder), cwd=folder)
        self._proxy_args = (public_address, superlink_address)
        # A liveness probe on the bind address (the public name may not resolve from here): certificate not checked.
        probe = LOOPBACK if bind in ("0.0.0.0", "::", "[::]", "") else bind
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            procs.wait_http(f"https://{probe}:{port}/health", 60, proc, verify=False)

    def start_federation(self, address: str, public_address: str, site_url: str | None = None) -> dict[str, Path]:
        """SuperLink on loopback, then its proxy for nodes."""
        if address.rsplit(":", 1)[1] == public_address.rsplit(":", 1)[1]:
            raise RuntimeError(
                f"SUPERLINK_ADDRESS ({address}, the SuperLink on loopback) and SUPERLINK_PUBLIC_ADDRESS "
                f"({public_address}, the proxy nodes dial) need different ports"
            )
        tls = self.start_superlink(address, site_url)
        self.start_proxy(public_address, address)
        return tls

    def revive(self) -> list[str]:
        """Restart the SuperLink (re-registering node keys), the proxy or the Celery worker when it died; returns
        what was restarted.

        Nodes ride through: while the SuperLink is down the proxy answers 502, which SuperNodes retry. A restarted
        worker re-queues the work of unfinished campaigns (campaigns.tasks, on `worker_ready`): the messages the
        dead one had taken are not redelivered before the broker's visibility timeout (an hour).
        """
        restarted = []
        for name, start, args in (
            ("superlink", self.start_superlink, self._superlink_args),
            ("proxy", self.start_proxy, self._proxy_args),
            ("worker", self.start_worker, (self._worker_env,) if self._worker_env is not None else None),
        ):
            code = self.supervisor.returncode(name)
            if code is None or args is None:  # running, or never started
                continue
            log.warning("%s exited with code %s; restarting it. Last log lines:\n%s",
                        name, code, self.supervisor.tail(name))  # fmt: skip
            self.supervisor.stop(name, timeout=5)  # reaps it and whatever it left in its group
            start(*args)
            restarted.append(name)
        return restarted

    def start_join(
        self,
        name: str,
        site_url: str,
        token: str,
        data_path: Path,
        model_path: Path,
        warm_socket: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Path:
        """A contributor's node, through the contributor's own command: `python -m federation join` (with
        `warm_socket`: its rounds go to that shared warm worker instead of one of its own)."""
        home = self.state_dir / "nodes" / name
        home.mkdir(parents=True, exist_ok=True)
        self.supervisor.start(
            f"node-{name}",
            [sys.executable, "-m", "federation", "join", "--site", site_url, "--token", token, "--data",
             str(data_path), "--name", name, "--model", str(model_path), "--home", str(home), "--interval", "3",
             # Local nodes share this one machine (the bench starts up to 100): join's memory bar is meant
             # for a contributor's own machine, and the bench measures memory itself.
             "--min-memory", "0", *(["--warm-worker", str(warm_socket)] if warm_socket else [])],
            env=procs.flower_env(home / "flwr-home", env),
            cwd=home,
        )  # fmt: skip
        return home

    def start_web(self, port: int, env: dict[str, str], workers: int | None = None) -> None:
        """The site on `port` (bind host WEB_BIND): Caddy in front (stack/web_proxy.py), uvicorn workers behind it.

        Why uvicorn with `--workers` and Caddy rather than gunicorn: the site is ASGI (streamed zips and downloads
        without a thread per client), and no Python ASGI server sends files with sendfile (uvicorn does not implement
        the zero-copy extension; gunicorn's sendfile is for its sync WSGI workers only). So the bytes of a stored
        file never pass through Python at all: Django answers with X-Accel-Redirect and Caddy sends the file with
        sendfile(2). What is left for the Python server is many processes, which uvicorn's own supervisor gives
        (it restarts a worker that dies), with no extra dependency. The workers listen on a Unix socket in a 0700
        folder: only the proxy reaches them, so their answers' X-Accel headers never reach a client unprocessed and
        they may trust the proxy's X-Forwarded-For.
        """
        folder = self.state_dir / "web"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.chmod(0o700)
        socket_path = folder / "web.sock"
        if len(str(socket_path)) > 100:  # AF_UNIX paths are limited to 108 bytes: a short private folder instead
            self._socket_tmp = self._socket_tmp or Path(tempfile.mkdtemp(prefix="bayanihan-web-"))
            socket_path = self._socket_tmp / "web.sock"
        socket_path.unlink(missing_ok=True)
        self.web_socket = socket_path
        count = self.web_workers = workers or settings.WEB_WORKERS or min(2 * (os.cpu_count() or 1), 8)
        proc = self.supervisor.start(
            "web",
            [sys.executable, "-m", "uvicorn", "bayanihan_site.asgi:application", "--uds", str(socket_path),
             "--workers", str(count), "--no-access-log", "--no-server-header", "--proxy-headers",
             "--forwarded-allow-ips", "*"],
            env={**env, "DOWNLOADS_X_ACCEL": "1", "DB_POOL_SIZE": env.get("DB_POOL_SIZE") or "8",
                 "CACHE_REDIS_URL": env.get("CACHE_REDIS_URL") or cache_url(
                env.get("CELERY_BROKER_URL") or settings.CELERY_BROKER_URL)},
            cwd=PLATFORM_DIR,
        )  # fmt: skip
        bind = settings.WEB_BIND
        config = web_proxy.write_site_proxy_config(
            folder / "proxy",
            listen=f"{bind}:{port}",
            upstream_socket=socket_path,
            data_dir=Path(settings.DATA_DIR),
            trusted_proxies=settings.WEB_TRUSTED_PROXIES,
            access_log=self.supervisor.log_dir / "web-proxy-access.log",
        )
        proxy_proc = self.supervisor.start(
            "web-proxy", proxy.caddy_command(config), env=proxy.caddy_env(folder / "proxy"), cwd=folder / "proxy"
        )
        probe = LOOPBACK if bind in ("0.0.0.0", "::", "[::]", "") else bind
        url = f"http://{probe}:{port}/releases/"
        deadline = time.monotonic() + 60
        while True:
            for name, child in (("web", proc), ("web-proxy", proxy_proc)):
                if child.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {child.returncode}:\n{self.supervisor.tail(name)}")
            try:  # Caddy answers 502 until the workers listen
                if requests.get(url, timeout=5).status_code < 500:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within 60 s:\n{self.supervisor.tail('web')}")
            time.sleep(0.3)

    def stop_web(self) -> None:
        self.supervisor.stop("web-proxy")
        self.supervisor.stop("web")

    def start_worker(self, env: dict[str, str]) -> None:
        self._worker_env = env
        self.supervisor.start(
            "worker",
            [sys.executable, "-m", "celery", "-A", "bayanihan_site", "worker", "--pool=solo", "--loglevel=INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=env,
            cwd=PLATFORM_DIR,
        )  # fmt: skip

    def check(self) -> None:
        self.supervisor.check()

    def stop(self) -> None:
        self.supervisor.stop_all()
        if self._socket_tmp is not None:
            shutil.rmtree(self._socket_tmp, ignore_errors=True)


@dataclass
class LocalNodes:
    """Contributor nodes on this machine, each enrolled and run through `python -m federation join`
    (stack/local_nodes.py): `names[i]` trains on `data_root`/`names[i]`, all from the base model at `model`."""

    names: list[str]
    data_root: Path
    model: Path


@dataclass
class Platform:
    """What `running_platform` started, and how to reach it."""

    stack: Stack
    broker: Broker
    env: dict[str, str]  # the web's and worker's environment
    site_url: str
    port: int | None  # the web's, where it runs
    superlink: str | None  # Control address on loopback, where the SuperLink runs
    public: str | None  # the proxy nodes dial
    tls: dict[str, Path] | None  # the SuperLink's certificate files


@contextmanager
def running_platform(
    state_dir: Path,
    *,
    federation: bool = True,
    superlink: str | None = None,
    public: str | None = None,
    site_url: str | None = None,
    report_url: str | None = None,
    web_port: int | None = None,
    web_workers: int | None = None,
    worker: bool = True,
    nodes: LocalNodes | None = None,
    env: dict[str, str] | None = None,
    broker_url: str | None = None,
    broker_dir: Path | None = None,
    stop_signals: bool = True,
) -> Iterator[Platform]:
    """The platform on this machine, for `serve`, `demo`, the benchmarks and the tests; every process it started
    (and the embedded broker) stops on the way out, whatever happened: an exception, Ctrl-C, or, with
    `stop_signals`, a SIGTERM or SIGINT, which raise KeyboardInterrupt until then (procs.interrupt_on_signals).

    - broker: Redis at `broker_url` (CELERY_BROKER_URL) when it answers, else an embedded one in `broker_dir`
      (VAR_DIR/redis); it is this process's broker until the end (Broker.activate) and the children's.
    - `federation`: the SuperLink on loopback at `superlink` and its proxy for nodes at `public` (SUPERLINK_ADDRESS,
      SUPERLINK_PUBLIC_ADDRESS); its ServerApps report to `report_url`, by default the site's own `site_url`
      (SITE_URL).
    - `worker`: the Celery worker. `web_port`: the site (Caddy before `web_workers` uvicorn workers), none without.
    - `nodes`: local contributor nodes, once the rest is up (they enroll through the site at `site_url`).
    - `env`: settings for the web and worker on top of this process's own (platform_env).
    """
    previous_handlers = procs.interrupt_on_signals() if stop_signals else {}
    stack, broker = Stack(state_dir), None
    try:
        broker = ensure_broker(broker_url or settings.CELERY_BROKER_URL, broker_dir or Path(settings.VAR_DIR) / "redis")
        broker.activate()  # this process queues tasks too (a campaign's launch)
        child_env = platform_env(**{**(env or {}), "CELERY_BROKER_URL": broker.url})
        site_url = site_url or settings.SITE_URL
        superlink = superlink or settings.SUPERLINK_ADDRESS
        public = public or settings.SUPERLINK_PUBLIC_ADDRESS
        tls = stack.start_federation(superlink, public, report_url or site_url) if federation else None
        if worker:  # first: it boots while the web is waited for
            stack.start_worker(child_env)
        if web_port is not None:
            stack.start_web(web_port, child_env, workers=web_workers)
        if nodes is not None:
            from stack.local_nodes import start_local_nodes

            start_local_nodes(stack, nodes.names, site_url, nodes.data_root, nodes.model)
        yield Platform(
            stack=stack,
            broker=broker,
            env=child_env,
            site_url=site_url,
            port=web_port,
            superlink=superlink if federation else None,
            public=public if federation else None,
            tls=tls,
        )
    finally:
        # The orderly stop is not cut short by a second Ctrl-C or SIGTERM (it ends within the supervisor's grace
        # period; a SIGKILL still ends it, and the children with it: procs' parent-death signal).
        for signum in previous_handlers:
            signal.signal(signum, signal.SIG_IGN)
        try:
            stack.stop()
            if broker is not None:
                broker.close()
        finally:
            procs.restore_signals(previous_handlers)
