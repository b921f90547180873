"""ASGI entry point; puts platform/ on sys.path since it is not a package."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_root = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [p for p in (str(_root / "platform"), str(_root)) if p not in sys.path]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bayanihan_site.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

from bayanihan_site.limits import RequestLimits  # noqa: E402

# Outermost: refuses oversized or uncredentialed bodies before Django's handler spools them (see limits.py).
application = RequestLimits(get_asgi_application())
