"""A node runs only the app its installed `federation` ships: the FAB check, the self-test, the PATH wrapper."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
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


def test_join_checks_flowers_internals_in_a_child_and_passes_on_its_account(monkeypatch, tmp_path: Path):
    node_runtime.self_test_elsewhere()  # join's check: passes on the pinned Flower
    # A Flower whose internal moved, as the child sees it (sitecustomize runs before the check in the child only).
    (tmp_path / "sitecustomize.py").write_text(
        "from federation import node_runtime\n"
        "node_runtime._INTERNALS['gone'] = ('flwr.supernode.runtime.run_clientapp:no_such_thing', ())\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(procs.REPO_ROOT)]))
    with pytest.raises(node_runtime.InternalsChanged) as err:
        node_runtime.self_test_elsewhere()
    text = str(err.value)
    assert text.startswith("federation.node_runtime was written against flwr 1.42.0"), text
    assert "no_such_thing" in text and "Install flwr==1.42.0" in text and "Traceback" not in text


def test_the_node_bin_puts_our_flwr_clientapp_first_on_the_supernode_path(tmp_path: Path):
    home = tmp_path / "node"
    bin_dir = procs.node_runtime_bin(home)
    assert stat.S_IMODE(bin_dir.stat().st_mode) == 0o700
    env = procs.flower_env(home / "flwr-home", node_bin=bin_dir)
    found = shutil.which("flwr-clientapp", path=env["PATH"])
    assert found == str(bin_dir / "flwr-clientapp")
    assert os.access(found, os.X_OK)
    # Flower's command line reaches node_runtime: --help comes from its copy of Flower's parser.
    result = subprocess.run([found, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--runtime-api-address" in result.stdout


def test_our_flwr_clientapp_command_line_is_flowers_flag_for_flag(monkeypatch):
    # The module, not the function of the same name that flwr.supernode.cli exports.
    flwr_clientapp = importlib.import_module("flwr.supernode.cli.flwr_clientapp")
    flowers = flwr_clientapp._parse_args_run_flwr_clientapp
    assert node_runtime.cli_differences(node_runtime.cli_parser(), flowers()) == []
    # Every flag Flower's SuperExec passes (supercore/superexec/executor/subprocess_executor.py) reads the same.
    argv = ["--runtime-api-address", "127.0.0.1:9094", "--token", "ab" * 16, "--root-certificates", "/ca.pem",
            "--parent-pid", "42", "--allow-runtime-dependency-installation"]  # fmt: skip
    assert node_runtime.cli_parser().parse_args(argv) == flowers().parse_args(argv)

    def with_a_new_flag():
        parser = flowers()
        parser.add_argument("--new-flag", type=int)
        return parser

    # A Flower upgrade that adds (or changes) a flag fails `join`'s start-up check, naming it.
    monkeypatch.setattr(flwr_clientapp, "_parse_args_run_flwr_clientapp", with_a_new_flag)
    with pytest.raises(node_runtime.InternalsChanged, match="Flower's --new-flag is missing here"):
        node_runtime.self_test()
    node_runtime.self_test(compare_cli=False)  # the per-message check skips it (join ran it)


# One message through node_runtime.main() as `join` runs it (warm socket set), with Flower's Runtime API faked at
# the functions main() calls; the worker is absent, so the job ends in submit()'s "unavailable" after all the work
# it does before connecting. Prints the reply's reason and every module imported by the end.
PER_MESSAGE = """
import atexit, json, os, sys, types
out, fab_path = sys.argv[1], sys.argv[2]
atexit.register(lambda: open(out, "w").write(json.dumps({"modules": sorted(sys.modules), "reasons": reasons})))
reasons = []

from flwr.app import Context, Message, RecordDict
import flwr.supercore.heartbeat, flwr.supercore.runtime, flwr.supernode.runtime.run_clientapp as rc
from flwr.supercore.fab import Fab
from flwr.supercore.task_identity import TaskIdentity
import hashlib

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # as pull_task_input sets them
import json

content = open(fab_path, "rb").read()
fab = Fab(hashlib.sha256(content).hexdigest(), content, {})
message = Message(RecordDict(), dst_node_id=1, message_type="train")
message.metadata.__dict__["_message_id"] = "m1"
context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})

class Client:
    def close(self):
        pass

class Heartbeat:
    def __init__(self, fn):
        self.is_running = False
    def start(self):
        pass

def from_server_address(*, server_address, insecure, root_certificates=None, interceptors=None, retry_invoker=None):
    return Client()

def pull_task_input(client):
    return message, context, types.SimpleNamespace(fab_id="bayanihan/bayanihan-app", run_id=1), fab

def push_message(client, message, context):
    reasons.append(message.error.reason)

def push_task_output(client, context, sub_status, details):
    pass

flwr.supercore.runtime.RuntimeHttpClient.from_server_address = staticmethod(from_server_address)
flwr.supercore.heartbeat.HeartbeatSender = Heartbeat
rc.pull_task_input, rc.push_message, rc.push_task_output = pull_task_input, push_message, push_task_output

from federation import node_runtime
node_runtime.main(["--token", "ab" * 16, "--insecure", "--parent-pid", str(os.getppid())])
"""


def test_the_per_message_shim_imports_no_torch_transformers_sql_or_flowers_supernode_cli(tmp_path: Path):
    fab = tmp_path / "app.fab"
    fab.write_bytes(build_fab().content)
    out = tmp_path / "out.json"
    env = procs.flower_env(tmp_path / "flwr-home", {
        "BAYANIHAN_WARM_SOCKET": str(tmp_path / "no-worker" / "warm.sock"), "BAYANIHAN_WARM_CONNECT_WAIT": "0",
    })  # fmt: skip
    result = subprocess.run([sys.executable, "-c", PER_MESSAGE, str(out), str(fab)], capture_output=True, text=True,
                            env=env, timeout=120)  # fmt: skip
    seen = json.loads(out.read_text())
    # It went the whole way: FAB accepted, job handed to submit(), which found no worker.
    assert result.returncode == 1 and len(seen["reasons"]) == 1, result.stdout + result.stderr
    assert seen["reasons"][0].startswith("warm worker unavailable: nothing answers"), seen["reasons"]
    # Each of these costs CPU-seconds per message that 50 nodes on one machine pay at once.
    heavy = ("torch", "transformers", "sqlalchemy", "flwr.supernode.cli.flwr_clientapp")
    imported = [m for m in seen["modules"] if any(m == h or m.startswith(h + ".") for h in heavy)]
    assert imported == []
