"""The web workers `make serve` starts use a PostgreSQL connection pool (DB_POOL_SIZE) instead of one persistent
connection per request thread; everything else keeps its settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _database(tmp_path: Path, **env: str) -> dict:
    code = (
        "import json, django; from django.conf import settings; "
        "db = settings.DATABASES['default']; "
        "print(json.dumps({k: db.get(k) for k in ('CONN_MAX_AGE', 'CONN_HEALTH_CHECKS', 'OPTIONS')}))"
    )
    environ = {k: v for k, v in os.environ.items() if k not in ("DB_POOL_SIZE", "DATABASE_URL")}
    environ.update(
        BAYANIHAN_VAR=str(tmp_path), DJANGO_SETTINGS_MODULE="bayanihan_site.settings",
        PYTHONPATH=f"{REPO / 'platform'}{os.pathsep}{REPO}", **env,
    )  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_web_workers_share_a_pool_per_process_on_postgresql(tmp_path):
    db = _database(tmp_path, DATABASE_URL="postgres://u@127.0.0.1:5432/x", DB_POOL_SIZE="8")
    assert db["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 8, "timeout": 30}
    assert db["CONN_MAX_AGE"] == 0 and db["CONN_HEALTH_CHECKS"] is True


def test_without_a_pool_size_postgresql_keeps_persistent_checked_connections(tmp_path):
    db = _database(tmp_path, DATABASE_URL="postgres://u@127.0.0.1:5432/x")
    assert "pool" not in (db["OPTIONS"] or {}) and db["CONN_MAX_AGE"] == 60 and db["CONN_HEALTH_CHECKS"] is True


def test_sqlite_ignores_the_pool_size(tmp_path):
    db = _database(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", DB_POOL_SIZE="8")
    assert "pool" not in db["OPTIONS"] and db["CONN_MAX_AGE"] == 0
