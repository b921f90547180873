"""The platform's processes on one machine: SuperLink, web, Celery worker, and (for demos) SuperNodes."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from federation import procs

PLATFORM_DIR = Path(settings.REPO_ROOT) / "platform"


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

    def start_superlink(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        bind = os.environ.get("SUPERLINK_BIND", host)  # 0.0.0.0 to accept remote nodes
        superlink_dir = self.state_dir / "superlink"
        superlink_dir.mkdir(parents=True, exist_ok=True)
        proc = self.supervisor.start(
            "superlink",
            procs.superlink_command(superlink_dir, bind, int(port)),
            env=procs.flower_env(superlink_dir / "flwr-home"),
            cwd=superlink_dir,
        )
        procs.wait_http(f"http://{host}:{port}/health", 60, proc)

    def start_supernode(self, name: str, superlink: str, data_path: Path, model_path: Path) -> None:
        """The contributor's own command: validates the data, then execs a real flower-supernode."""
        node_dir = self.state_dir / "nodes" / name
        node_dir.mkdir(parents=True, exist_ok=True)
        self.supervisor.start(
            f"supernode-{name}",
            [sys.executable, "-m", "federation", "node", "--superlink", superlink, "--data", str(data_path),
             "--name", name, "--model", str(model_path), "--home", str(node_dir / "flwr-home")],
            env=procs.flower_env(node_dir / "flwr-home"),
            cwd=node_dir,
        )  # fmt: skip

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
