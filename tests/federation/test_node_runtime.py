"""A node runs only the app its installed `federation` ships: the FAB check, the self-test, the PATH wrapper."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from federation import node_runtime, procs
from federation.control import APP_DIR, build_fab
from federation.node_runtime import AppRefused, check_fab

FAB_ID = "bayanihan/bayanihan-app"


def app_copy(tmp_path: Path) -> Path:
    target = tmp_path / "app"
    shutil.copytree(APP_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def check(fab, fab_id: str = FAB_ID) -> None:
    check_fab(fab_id=fab_id, fab_hash=fab.hash_str, content=fab.content)


def test_the_app_the_platform_builds_is_accepted():
    check(build_fab())  # the platform submits exactly this (federation.control.start_run)


def test_a_modified_client_app_is_refused_naming_the_file(tmp_path: Path):
    app = app_copy(tmp_path)
    client = app / "bayanihan_app" / "client_app.py"
    client.write_text(client.read_text() + "\nopen('/tmp/pwned', 'w').write('x')\n")
    with pytest.raises(AppRefused, match="files that differ from the installed app: bayanihan_app/client_app.py$"):
        check(build_fab(app))


def test_an_extra_file_is_refused(tmp_path: Path):
    app = app_copy(tmp_path)
    (app / "bayanihan_app" / "helper.py").write_text("import os\n")
    with pytest.raises(AppRefused, match="files the installed app does not have: bayanihan_app/helper.py"):
        check(build_fab(app))


def test_a_changed_default_config_is_refused(tmp_path: Path):
    app = app_copy(tmp_path)
    pyproject = app / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("local-steps = 10", "local-steps = 11"))
    with pytest.raises(AppRefused, match="differ from the installed app: pyproject.toml"):
        check(build_fab(app))


def test_another_fab_id_is_refused_even_with_the_same_files(tmp_path: Path):
    app = app_copy(tmp_path)
    pyproject = app / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('publisher = "bayanihan"', 'publisher = "mallory"'))
    with pytest.raises(AppRefused, match="fab id 'mallory/bayanihan-app' is not the Bayanihan app"):
        check(build_fab(app), fab_id="mallory/bayanihan-app")
    with pytest.raises(AppRefused, match="fab id"):
        check(build_fab(), fab_id="mallory/bayanihan-app")


def test_content_that_does_not_match_its_hash_or_is_no_zip_is_refused():
    fab = build_fab()
    with pytest.raises(AppRefused, match="does not match its announced sha256"):
        check_fab(fab_id=FAB_ID, fab_hash="0" * 64, content=fab.content)
    junk = b"not a zip"
    with pytest.raises(AppRefused, match="not a readable zip"):
        check_fab(fab_id=FAB_ID, fab_hash=hashlib.sha256(junk).hexdigest(), content=junk)


def test_a_tampered_manifest_does_not_hide_a_changed_file(tmp_path: Path):
    # Re-zip the shipped FAB with one file changed and Flower's CONTENT manifest left as it was.
    original = build_fab().content
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(original)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "bayanihan_app/server_app.py":
                data += b"\n# changed\n"
            dst.writestr(info, data)
    content = out.getvalue()
    with pytest.raises(AppRefused, match="differ from the installed app: bayanihan_app/server_app.py"):
        check_fab(fab_id=FAB_ID, fab_hash=hashlib.sha256(content).hexdigest(), content=content)


def test_self_test_passes_on_the_pinned_flower_and_names_what_changed(monkeypatch):
    node_runtime.self_test()
    monkeypatch.setitem(node_runtime._INTERNALS, "gone", ("flwr.supernode.runtime.run_clientapp:no_such_thing", ()))
    monkeypatch.setitem(
        node_runtime._INTERNALS, "renamed", ("flwr.supernode.runtime.run_clientapp:push_message", ("msg",))
    )
    with pytest.raises(node_runtime.InternalsChanged) as err:
        node_runtime.self_test()
    text = str(err.value)
    assert "flwr 1.42.0" in text and "no_such_thing" in text and "lost parameter(s) msg" in text


def test_the_node_bin_puts_our_flwr_clientapp_first_on_the_supernode_path(tmp_path: Path):
    home = tmp_path / "node"
    bin_dir = procs.node_runtime_bin(home)
    assert stat.S_IMODE(bin_dir.stat().st_mode) == 0o700
    env = procs.flower_env(home / "flwr-home", node_bin=bin_dir)
    found = shutil.which("flwr-clientapp", path=env["PATH"])
    assert found == str(bin_dir / "flwr-clientapp")
    assert os.access(found, os.X_OK)
    # It is Flower's command line that reaches node_runtime: --help comes from the same parser.
    result = subprocess.run([found, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--runtime-api-address" in result.stdout
