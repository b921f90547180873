"""The whole platform for a benchmark, in its own state folder: web, Celery worker, broker and TLS SuperLink.

Each benchmark gets var/bench/NAME/ with its own SQLite database, signing key and SuperLink state, so a run never
touches the demo's or the tests' data. Django is set up here, in this process, the way `manage.py` does it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import REPO, use_platform


@dataclass
class Site:
    var: Path
    url: str
    port: int
    superlink: str
    stack: Any  # stack.runner.Stack
    env: dict[str, str]


def setup_django(var: Path) -> None:
    """Point every setting at `var` before Django reads them; migrate a fresh SQLite database there."""
    from federation import procs

    os.environ["BAYANIHAN_VAR"] = str(var)
    # Its own SQLite file, even where DATABASE_URL names the CI database: a benchmark must not write there.
    os.environ["DATABASE_URL"] = os.environ.get("BENCH_DATABASE_URL", f"sqlite:///{var / 'bayanihan.sqlite3'}")
    os.environ["CELERY_QUEUE"] = f"bench-{var.name}-{os.getpid()}"
    port = procs.free_port()
    os.environ["PORT"] = str(port)
    os.environ["SITE_URL"] = f"http://127.0.0.1:{port}"
    os.environ["SUPERLINK_ADDRESS"] = f"127.0.0.1:{procs.free_port()}"
    os.environ["SUPERLINK_PUBLIC_ADDRESS"] = f"127.0.0.1:{procs.free_port()}"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    use_platform()

    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    call_command("collectstatic", verbosity=0, interactive=False)


def stop_on_signals() -> None:
    """SIGTERM (a CI timeout, `kill`) and SIGINT (even where a background start ignored it) unwind through `finally`
    blocks, which stop the processes a benchmark started; a bare exit would leave them running."""
    from federation import procs

    procs.interrupt_on_signals()


@contextmanager
def running_site(name: str, *, fresh: bool = True, superlink: bool = True) -> Iterator[Site]:
    """Start web + worker (+ SuperLink) with stack.runner.running_platform; stop every process on the way out,
    whatever happened."""
    stop_on_signals()  # already while Django migrates: a SIGTERM then still unwinds
    var = REPO / "var" / "bench" / name
    if fresh:
        shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True, exist_ok=True)
    setup_django(var)

    from django.conf import settings

    from stack.runner import running_platform

    with running_platform(var / "run", federation=superlink, web_port=settings.PORT, broker_dir=var / "redis") as up:
        yield Site(var, settings.SITE_URL, settings.PORT, settings.SUPERLINK_ADDRESS, up.stack, up.env)
