"""var/ is 0700 and the SQLite database and secret key 0600, whatever the umask."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _start_site(var: Path) -> None:
    """A fresh process loading the settings (as web, worker and manage.py do) and touching the database."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SECRET_KEY")}
    env.update(BAYANIHAN_VAR=str(var), DJANGO_SETTINGS_MODULE="bayanihan_site.settings")
    code = (
        "import os; os.umask(0o022); import sys; sys.path[:0] = ['platform', '.']; import django; django.setup();"
        "from django.db import connection; connection.cursor().execute('create table if not exists t (x int)')"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=60)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_fresh_var_is_private(tmp_path):
    var = tmp_path / "var"
    _start_site(var)
    assert _mode(var) == 0o700
    assert _mode(var / "secret_key") == 0o600
    assert _mode(var / "bayanihan.sqlite3") == 0o600
    for sidecar in var.glob("bayanihan.sqlite3-*"):  # WAL files take the database's mode
        assert _mode(sidecar) == 0o600, sidecar


def test_state_left_world_readable_by_an_older_version_is_tightened(tmp_path):
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    var.chmod(0o755)
    for name in ("secret_key", "bayanihan.sqlite3"):
        (var / name).write_text("x" * 20 if name == "secret_key" else "")
        (var / name).chmod(0o644)
    _start_site(var)
    assert (_mode(var), _mode(var / "secret_key"), _mode(var / "bayanihan.sqlite3")) == (0o700, 0o600, 0o600)


def test_superlink_tls_folder_and_key_are_private(tmp_path):
    from federation.pki import ensure_superlink_tls

    old = os.umask(0o022)
    try:
        paths = ensure_superlink_tls(tmp_path / "tls", ["127.0.0.1"])
    finally:
        os.umask(old)
    assert _mode(tmp_path / "tls") == 0o700 and _mode(paths["key"]) == 0o600
