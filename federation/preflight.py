"""What `join` checks before it enrolls: everything a round will need, said as what to fix.

A node that joins with a missing model, a changed checkpoint, a full disk or too little memory is admitted,
picked for a round, and only then fails inside the ClientApp, where the contributor sees a round error and
the campaign loses a node. Each check here returns plain problems (no traceback), and `join` stops with all
of them before a token is spent.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from federation.basemodel import describe_checkpoint

GIB = 1024**3
# Measured (README "What a contributor needs"): a ClientApp training SmolLM2-135M at the default TrainConfig
# (batch 4 × seq-len 256) peaks at 4.6 GiB RSS, the SuperNode beside it ≈ 0.3 GiB; below 5 GiB available a
# round risks being killed for memory. Campaigns with shorter sequences need less: hence an option.
# Disk: the node's state, logs and Flower's app cache stay under 100 MB, but a full disk fails every write
# in a round, so ask for 1 GiB.
DEFAULT_MIN_MEMORY_GIB = 5.0
DEFAULT_MIN_DISK_GIB = 1.0


@dataclass(frozen=True)
class Problem:
    what: str  # what is wrong, naming the path or number
    fix: str  # what the contributor can do about it

    def __str__(self) -> str:
        return f"{self.what}\n    fix: {self.fix}"


def check_model(model: str | None, registered: list[dict] | None) -> list[Problem]:
    """The checkpoint folder is usable and, when the site lists its base models, is one of them byte for byte."""
    prepare = "python -m federation prepare-base --out model/"
    if not model:
        return [Problem("no --model given: the node needs a local copy of the campaign's base model",
                        f"prepare it with `{prepare}` and pass --model model/")]  # fmt: skip
    try:
        files = describe_checkpoint(model)["files"]
    except ValueError as err:
        return [Problem(str(err), f"point --model at a prepared checkpoint folder, or make one with `{prepare}`")]
    candidates = [base for base in registered or [] if base.get("files")]
    if not candidates:
        return []  # the site has no base model yet (or did not say): nothing to compare against
    if any(not _differences(files, base["files"]) for base in candidates):
        return []
    closest = min(candidates, key=lambda base: len(_differences(files, base["files"])))
    differ = _differences(files, closest["files"])
    names = ", ".join(sorted(differ)[:5]) + (" …" if len(differ) > 5 else "")
    label = str(closest.get("hf_id") or closest.get("name"))[:200]  # from the network: bounded
    return [
        Problem(
            f"{model}: these files are not the site's base model {label} ({len(differ)} missing or different: {names})",
            f"make a fresh copy with `python -m federation prepare-base --out {model}` (after deleting the folder);"
            " a changed checkpoint would train an adapter for a different model",
        )
    ]


def _differences(files: dict[str, str], expected: dict[str, str]) -> list[str]:
    return [name for name, sha in expected.items() if files.get(name) != sha]


def check_disk(path: Path | str, min_free_gib: float) -> list[Problem]:
    """Free space where the node keeps its state, logs and Flower's app cache."""
    path = Path(path)
    existing = next(p for p in [path, *path.parents] if p.exists())
    free = shutil.disk_usage(existing).free
    if free >= min_free_gib * GIB:
        return []
    return [
        Problem(
            f"only {free / GIB:.2f} GiB free on the disk of {path}; a node needs at least {min_free_gib:g} GiB",
            "free some space, put --home on another disk, or lower the bar with --min-free-disk GIB",
        )
    ]


def check_memory(min_available_gib: float, available: int | None = None) -> list[Problem]:
    """Memory the SuperNode and its training process can have without swapping or being killed."""
    available = psutil.virtual_memory().available if available is None else available
    if available >= min_available_gib * GIB:
        return []
    return [
        Problem(
            f"only {available / GIB:.2f} GiB of memory available; a round needs about {min_available_gib:g} GiB",
            "close other programs, or lower the bar with --min-memory GIB (a round may then be killed for memory)",
        )
    ]


def site_base_models(site: str | None) -> list[dict] | None:
    """The site's registered base models (name, hf_id, files), or None when it cannot say (old site, offline)."""
    if not site:
        return None
    try:
        response = requests.get(f"{site.rstrip('/')}/api/v1/base-models", timeout=30)
        if response.status_code != 200:
            return None
        models = response.json().get("base_models")
    except (requests.RequestException, ValueError, AttributeError):
        return None
    if not isinstance(models, list):
        return None
    # The answer comes from the network: keep only well-formed entries.
    return [m for m in models if isinstance(m, dict) and isinstance(m.get("files"), dict)]


def check_all(
    *, model: str | None, site: str | None, home: Path, min_free_disk_gib: float, min_memory_gib: float
) -> list[Problem]:
    return [
        *check_model(model, site_base_models(site)),
        *check_disk(home, min_free_disk_gib),
        *check_memory(min_memory_gib),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-free-disk",
        type=float,
        default=DEFAULT_MIN_DISK_GIB,
        metavar="GIB",
        help="refuse to start with less free disk under --home (default %(default)s GiB)",
    )
    parser.add_argument("--min-memory", type=float, default=DEFAULT_MIN_MEMORY_GIB, metavar="GIB",
                        help="refuse to start with less available memory (default %(default)s GiB)")  # fmt: skip


def passed(args: argparse.Namespace) -> bool:
    """Run every check for `join`; print each problem with its fix. True when there is nothing to fix."""
    home = Path(args.home).expanduser().resolve()
    site = args.site
    if not site and (home / "node.json").is_file():  # a resumed node: the site it enrolled with
        try:
            site = json.loads((home / "node.json").read_text()).get("site")
        except (OSError, ValueError):
            site = None
    problems = check_all(
        model=args.model, site=site, home=home, min_free_disk_gib=args.min_free_disk, min_memory_gib=args.min_memory
    )
    if problems:
        print("join: this machine is not ready; nothing was sent. Fix these and run join again:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
    return not problems
