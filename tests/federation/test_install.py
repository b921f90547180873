"""The contributor package as a contributor gets it: `pip install .` into a fresh venv, then every command.

Every other test runs `federation` from the platform's environment, which has everything in
requirements.txt; that hid a missing dependency (gguf) from all of them. Here nothing but what the package
declares is installed, the commands run from outside the checkout (so the checkout is not importable), and
`join` enrolls with a live test site and its SuperNode connects to a real TLS SuperLink.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.tiny import write_tiny_gguf

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class FreshVenv:
    root: Path
    python: Path
    install_seconds: float

    def env(self) -> dict[str, str]:
        # What a contributor's shell has: none of the platform's variables, nothing on PYTHONPATH.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE")}
        env["PATH"] = f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.python), "-m", "federation", *args],
            cwd=self.root, env=self.env(), capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    """Build and install the package from this checkout into a new venv, once per test session."""
    root = tmp_path_factory.mktemp("fresh-install")
    # A copy of what the package is made of, so the build writes its build/ and egg-info there, not here.
    src = root / "src"
    src.mkdir()
    shutil.copy2(REPO / "pyproject.toml", src)
    shutil.copytree(REPO / "federation", src / "federation", ignore=shutil.ignore_patterns("__pycache__"))
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)  # no system site-packages
    python = root / "venv" / "bin" / "python"
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(src)], capture_output=True, text=True, timeout=1800
    )
    seconds = time.monotonic() - started
    assert pip.returncode == 0, f"pip install . failed:\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}"
    print(f"\nfresh venv: python -m venv + pip install . took {seconds:.0f} s", file=sys.stderr)
    return FreshVenv(root, python, seconds)


def test_the_installed_package_is_used_and_nothing_of_the_platform_came_with_it(fresh_venv):
    probe = subprocess.run(
        [str(fresh_venv.python), "-c", "import federation, importlib.util as u; print(federation.__file__);"
         "print([m for m in ('django', 'pytest', 'celery') if u.find_spec(m)])"],
        cwd=fresh_venv.root, env=fresh_venv.env(), capture_output=True, text=True,
    )  # fmt: skip
    where, platform_modules = probe.stdout.splitlines()
    assert where.startswith(str(fresh_venv.root / "venv")) and "site-packages" in where
    assert platform_modules == "[]"


def test_validate_prints_the_fingerprint_or_file_line_errors(fresh_venv, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "hello"}\n{"instruction": "add", "output": "1 + 1 = 2"}\n')
    result = fresh_venv.run("validate", str(good))
    assert result.returncode == 0, result.stderr
    assert "2 records" in result.stdout and "fingerprint sha256" in result.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    result = fresh_venv.run("validate", str(bad))
    assert result.returncode == 2 and f"{bad}:2:" in result.stderr and "Traceback" not in result.stderr


def test_demo_corpus_writes_node_splits_or_says_what_is_wrong(fresh_venv, tmp_path):
    result = fresh_venv.run("demo-corpus", "--out", str(tmp_path / "c"), "--nodes", "2", "--max-chunks", "4")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c" / "node-2" / "train.jsonl").is_file() and (tmp_path / "c" / "heldout.jsonl").is_file()

    result = fresh_venv.run("demo-corpus", "--out", str(tmp_path / "d"), "--nodes", "0")
    assert result.returncode == 2 and "--nodes must be at least 1" in result.stderr


@pytest.fixture(scope="session")
def prepared_base(fresh_venv, tiny_checkpoint, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`prepare-base` from the fresh venv on a GGUF made here (the real GGUF path, no 93 MB download)."""
    work = tmp_path_factory.mktemp("prepare")
    gguf_file = write_tiny_gguf(tiny_checkpoint, work / "gguf" / "tiny.gguf")
    out = work / "model"
    result = fresh_venv.run("prepare-base", "--gguf", str(gguf_file), "--id", "test/tiny-llama", "--out", str(out),
                            "--cache", str(work / "cache"))  # fmt: skip
    return result, out


def test_prepare_base_dequantizes_a_gguf_or_names_the_missing_file(fresh_venv, prepared_base, tiny_corpus, tmp_path):
    result, out = prepared_base
    assert result.returncode == 0, result.stderr[-3000:]  # before gguf was a dependency: ImportError here
    assert "test/tiny-llama ready at" in result.stdout
    assert (out / "model.safetensors").is_file() and (out / "bayanihan-base.json").is_file()
    counted = fresh_venv.run("validate", "--model", str(out), str(tiny_corpus / "node-1"))  # its tokenizer works
    assert counted.returncode == 0 and "tokens after truncation" in counted.stdout, counted.stderr

    result = fresh_venv.run("prepare-base", "--gguf", str(tmp_path / "absent.gguf"), "--out", str(tmp_path / "m"))
    assert result.returncode == 2 and "absent.gguf: no such GGUF file" in result.stderr


def test_verify_accepts_a_signed_release_and_refuses_a_changed_one(fresh_venv, tmp_path):
    from tests.federation.test_verify import _key_pair, _write_release

    private, public = _key_pair(tmp_path, "platform")
    release = _write_release(tmp_path / "release", private)
    result = fresh_venv.run("verify", str(release), "--key", str(public))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK ")

    with open(release / "adapter_model.safetensors", "r+b") as fh:
        fh.write(b"\xff")
    result = fresh_venv.run("verify", str(release), "--key", str(public))
    assert result.returncode == 1 and "FAILED" in result.stderr and "adapter_model.safetensors" in result.stderr


@pytest.mark.django_db(transaction=True)
def test_join_refuses_a_changed_model_then_enrolls_and_its_supernode_connects(
    fresh_venv, prepared_base, tiny_corpus, live_server, tls_superlink, tmp_path, settings
):
    from campaigns.services.setup import base_model_register
    from community.models import Contributor, EnrollmentToken, Node
    from community.services import contributor_set_status, contributor_signup, enrollment_token_create
    from federation import control

    _, model = prepared_base
    base_model_register(path=model, name="tiny", hf_id="test/tiny-llama")  # what the site tells join to expect
    contributor = contributor_signup(username="ana", email="a@x.org", password="a-long-pass-phrase-42",
                                     accept_terms=True)  # fmt: skip
    contributor_set_status(contributor=contributor, status=Contributor.Status.APPROVED)
    token, _ = enrollment_token_create(contributor=contributor)
    # --min-memory 1: no round is trained here, and the test machine is shared with other tests.
    join = ["join", "--site", live_server.url, "--token", token, "--data", str(tiny_corpus / "node-1"),
            "--name", "fresh", "--home", str(tmp_path / "home"), "--interval", "1", "--min-memory", "1"]  # fmt: skip

    # Error path: a checkpoint that differs from the site's base model is refused before anything is sent.
    changed = tmp_path / "changed"
    shutil.copytree(model, changed)
    (changed / "generation_config.json").write_text("{}")
    result = fresh_venv.run(*join, "--model", str(changed), timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not the site's base model test/tiny-llama" in result.stderr and "generation_config.json" in result.stderr
    assert not Node.objects.exists() and not EnrollmentToken.objects.get().used_at  # the token is still good

    # Happy path: the same token enrolls; the SuperNode started from the fresh venv connects with its key.
    log = (tmp_path / "join.log").open("w")
    node_proc = subprocess.Popen(
        [str(fresh_venv.python), "-m", "federation", *join, "--model", str(model)],
        cwd=fresh_venv.root, env=fresh_venv.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        control_api = control.client(settings.SUPERLINK_ADDRESS, settings.SUPERLINK_ROOT_CERT)
        deadline = time.monotonic() + 180
        node = None
        while time.monotonic() < deadline:
            assert node_proc.poll() is None, (tmp_path / "join.log").read_text()
            node = node or Node.objects.filter(contributor=contributor).first()
            if node is not None and int(node.flwr_node_id) in control.online_node_ids(control_api):
                break
            time.sleep(1)
        else:
            logs = [tmp_path / "join.log", tmp_path / "home" / "logs" / "supernode.log"]
            raise AssertionError("no connected node after 180 s:\n" + "\n".join(p.read_text()[-4000:] for p in logs))
        assert node.name == "fresh"
        supernode = (tmp_path / "home" / "logs" / "supernode.log").read_text()
        assert "Traceback" not in supernode, supernode
    finally:
        os.killpg(node_proc.pid, signal.SIGTERM)  # join stops its SuperNode on SIGTERM
        try:
            node_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(node_proc.pid, signal.SIGKILL)
            node_proc.wait()
        log.close()
        _kill_leftovers(tmp_path / "home")
    output = (tmp_path / "join.log").read_text()
    assert "trusting SuperLink CA sha256" in output and "stopping the node" in output


def _kill_leftovers(marker: Path) -> None:
    """A SuperNode runs in its own session; if join could not stop it, end whatever still names our tmp dir."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.info["pid"] != os.getpid() and str(marker) in " ".join(proc.info["cmdline"] or ()):
            try:
                proc.kill()
            except psutil.Error:
                pass
