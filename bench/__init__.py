"""Benchmark scripts, each run as a module from the repository root: `python -m bench.NAME` (or `make bench-…`).

Run that way, the repository root is on sys.path already, so `federation`, `testbed` and the other bench modules
import as they do everywhere else, with no path set up here. The one thing left is the Django site, for the benchmarks
that start it or read its database: `use_platform` below is the only place a benchmark touches sys.path for it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def use_platform() -> None:
    """Make the Django project importable and name its settings, as manage.py does: platform/ is a folder on sys.path
    (never a package, its apps import as top-level `campaigns`, `stack`…), not something `-m` puts there."""
    platform_dir = str(REPO / "platform")
    if platform_dir not in sys.path:
        sys.path.insert(0, platform_dir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bayanihan_site.settings")
