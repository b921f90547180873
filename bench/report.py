"""Shared by the benchmark scripts: what machine and commit a figure came from, and its section in docs/benchmarks.md.

Each script owns one section of docs/benchmarks.md, between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`, and
rewrites only that section, so the findings written by hand at the top (and other scripts' tables) survive reruns.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from bench import REPO

DOC = REPO / "docs" / "benchmarks.md"

HEADER = """# Benchmarks

Every table below was printed by a script under `bench/` and written here by it, with the command, the commit
and the machine it ran on. Rerun one with its `make bench-…` target; it replaces only its own section.

## Findings

(written by hand from the tables below)
"""


def commit() -> str:
    """Short commit id, with `+changes` when tracked files differ from it (the figures then are not that commit's)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head}+changes" if dirty else head


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{_cpu_model()}, {cores} cores, {_mem_total_gib():.0f} GiB; Linux {platform.release()}; "
        f"Python {platform.python_version()}, torch {_version('torch')}, flwr {_version('flwr')}, "
        f"transformers {_version('transformers')}, peft {_version('peft')}"
    )


class Timer:
    """Wall time of the whole script, reported in its section (the issue asks for < 30 min on 2 cores)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def minutes(self) -> float:
        return (time.monotonic() - self.started) / 60


def ran_as(make_target: str) -> str:
    """The command a section quotes: the script's make target when it ran with its defaults, else the module with the
    arguments it was given, so figures from a run with other options never pass for the make target's."""
    if not sys.argv[1:]:
        return make_target
    return f"python -m bench.{Path(sys.argv[0]).stem} {shlex.join(sys.argv[1:])}"


def write_section(
    name: str, title: str, body: str, command: str, timer: Timer | None = None, dry_run: bool = False
) -> Path:
    """Replace (or append) this script's section of docs/benchmarks.md; print it too (only print it: `dry_run`).
    `command` is the script's make target; `ran_as` turns it into what actually ran."""
    command = ran_as(command)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    took = f" · took {timer.minutes:.1f} min" if timer else ""
    section = (
        f"<!-- bench:{name} -->\n## {title}\n\n"
        f"`{command}` · commit `{commit()}` · {stamp}{took}  \n"
        f"Machine: {machine()}\n\n{body.strip()}\n<!-- /bench:{name} -->\n"
    )
    if dry_run:
        print(section, flush=True)
        return DOC
    text = DOC.read_text() if DOC.exists() else HEADER
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(section, flush=True)
    print(f"written to {DOC.relative_to(REPO)}", file=sys.stderr)
    return DOC
