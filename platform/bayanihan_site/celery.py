"""Celery app. Started as `celery -A bayanihan_site worker` with platform/ on sys.path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_root = Path(__file__).resolve().parent.parent.parent
for _p in (_root / "platform", _root):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from celery import Celery  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bayanihan_site.settings")

app = Celery("bayanihan")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
