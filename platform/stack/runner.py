"""The platform's processes on one machine: SuperLink, web, Celery worker, and (for demos) SuperNodes."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from federation import pki, procs

PLATFORM_DIR = Path(settings.REPO_ROOT) / "platform"


def superlink_tls() -> dict[str, Path]:
    """Given certificate files (SUPERLINK_CERT/KEY + CA) or the platform's own, made once under var/."""
    given = [os.environ.get(k) for k in ("SUPERLINK_CERT", "SUPERLINK_KEY")]
    if all(given):
        return {"ca": Path(settings.SUPERLINK_ROOT_CERT), "cert": Path(given[0]), "key": Path(given[1])}
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

    def __post_init__(self) -> None:
        self.supervisor = procs.Supervisor(self.state_dir / "logs")

    def start_superlink(self, address: str) -> dict[str, Path]:
        """TLS and node authentication always: only keys registered through enrollment are admitted."""
        host, port = address.rsplit(":", 1)
        bind = os.environ.get("SUPERLINK_BIND", host)  # 0.0.0.0 to accept remote nodes
        superlink_dir = self.state_dir / "superlink"
        superlink_dir.mkdir(parents=True, exist_ok=True)
        tls = superlink_tls()
        proc = self.supervisor.start(
            "superlink",
            procs.superlink_command(superlink_dir, bind, int(port), tls),
            env=procs.flower_env(superlink_dir / "flwr-home"),
            cwd=superlink_dir,
        )
        procs.wait_http(f"https://{host}:{port}/health", 60, proc, verify=str(tls["ca"]))
        return tls

    def start_join(self, name: str, site_url: str, token: str, data_path: Path, model_path: Path) -> Path:
        """A contributor's node, through the contributor's own command: `python -m federation join`."""
        home = self.state_dir / "nodes" / name
        home.mkdir(parents=True, exist_ok=True)
        self.supervisor.start(
            f"node-{name}",
            [sys.executable, "-m", "federation", "join", "--site", site_url, "--token", token, "--data",
             str(data_path), "--name", name, "--model", str(model_path), "--home", str(home), "--interval", "2",
             # Local nodes share this one machine (the bench starts up to 100): join's memory bar is meant
             # for a contributor's own machine, and the bench measures memory itself.
             "--min-memory", "0"],
            env=procs.flower_env(home / "flwr-home"),
            cwd=home,
        )  # fmt: skip
        return home

    def start_web(self, port: int, env: dict[str, str]) -> None:
        proc = self.supervisor.start(
            "web",
            [sys.executable, "-m", "uvicorn", "bayanihan_site.asgi:application", "--host",
             os.environ.get("WEB_BIND", "127.0.0.1"), "--port", str(port), "--no-access-log"],
            env=env,
            cwd=PLATFORM_DIR,
        )  # fmt: skip
        procs.wait_http(f"http://127.0.0.1:{port}/releases/", 60, proc)

    def start_worker(self, env: dict[str, str]) -> None:
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
