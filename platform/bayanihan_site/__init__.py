"""The Bayanihan Django project. Importing it loads the Celery app so tasks use its broker."""

from __future__ import annotations

from bayanihan_site.celery import app as celery_app

__all__ = ["celery_app"]
