"""What `join` checks before enrolling, and the message each failed check gives."""

from __future__ import annotations

import argparse
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from federation import preflight
from federation.basemodel import describe_checkpoint
from federation.preflight import GIB, check_disk, check_memory, check_model


def test_a_prepared_checkpoint_passes_with_or_without_the_sites_list(tiny_checkpoint):
    files = describe_checkpoint(tiny_checkpoint)["files"]
    assert check_model(str(tiny_checkpoint), None) == []
    assert check_model(str(tiny_checkpoint), []) == []
    other = {"name": "other", "hf_id": "org/other", "files": {"model.safetensors": "0" * 64}}
    assert check_model(str(tiny_checkpoint), [other, {"name": "t", "hf_id": "org/t", "files": files}]) == []


def test_no_model_says_how_to_prepare_one():
    [problem] = check_model(None, None)
    assert "no --model" in problem.what and "prepare-base --out model/" in problem.fix


def test_a_folder_that_is_not_a_checkpoint_names_what_is_missing(tmp_path):
    [problem] = check_model(str(tmp_path), None)
    assert str(tmp_path) in problem.what and "config.json" in problem.what
    assert "prepare-base" in problem.fix


def test_a_changed_checkpoint_names_the_files_that_differ_and_the_sites_model(tiny_checkpoint, tmp_path):
    expected = describe_checkpoint(tiny_checkpoint)["files"]
    changed = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, changed)
    (changed / "config.json").write_text((changed / "config.json").read_text() + " ")
    far = {"name": "far", "hf_id": "org/far", "files": {"a": "1", "b": "2", "config.json": "3"}}
    sites = [far, {"name": "tiny", "hf_id": "org/tiny", "files": expected}, {"name": "empty", "files": {}}]
    [problem] = check_model(str(changed), sites)  # named after the closest of the site's models
    assert (
        "not the site's base model org/tiny" in problem.what and "1 missing or different: config.json" in problem.what
    )
    assert f"prepare-base --out {changed}" in problem.fix


def test_too_little_disk_says_how_much_is_free_and_what_to_do(tmp_path):
    assert check_disk(tmp_path, 0.001) == []
    [problem] = check_disk(tmp_path / "not-made-yet", 1e9)  # a --home that join will create: its parent's disk
    assert "GiB free on the disk of" in problem.what and "at least 1e+09 GiB" in problem.what
    assert "--min-free-disk" in problem.fix


def test_too_little_memory_says_how_much_is_available_and_what_to_do():
    assert check_memory(2.0, available=3 * GIB) == []
    [problem] = check_memory(2.0, available=GIB // 2)
    assert problem.what == "only 0.50 GiB of memory available; a round needs about 2 GiB"
    assert "--min-memory" in problem.fix


class _Site(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path != "/api/v1/base-models":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_site_list_is_read_and_malformed_entries_are_dropped(site):
    url = f"http://127.0.0.1:{site.server_address[1]}"
    _Site.body = b'{"base_models": [{"name": "a", "files": {"x": "1"}}, {"name": "b", "files": "nope"}, 3]}'
    assert preflight.site_base_models(url) == [{"name": "a", "files": {"x": "1"}}]
    _Site.body = b"not json"
    assert preflight.site_base_models(url) is None
    assert preflight.site_base_models(url + "/elsewhere") is None  # an older site without the endpoint: 404
    assert preflight.site_base_models(None) is None


def test_join_prints_every_problem_with_its_fix(tmp_path, capsys):
    args = argparse.Namespace(model=str(tmp_path / "nothing"), site=None, home=str(tmp_path / "home"),
                              min_free_disk=1e9, min_memory=1e9)  # fmt: skip
    assert preflight.passed(args) is False
    err = capsys.readouterr().err
    assert err.startswith("join: this machine is not ready; nothing was sent.")
    assert err.count("    fix: ") == 3 and "nothing: not a directory" in err


def test_join_passes_a_ready_machine(tiny_checkpoint, tmp_path, capsys):
    args = argparse.Namespace(model=str(tiny_checkpoint), site=None, home=str(tmp_path), min_free_disk=0, min_memory=0)
    assert preflight.passed(args) is True and capsys.readouterr().err == ""
