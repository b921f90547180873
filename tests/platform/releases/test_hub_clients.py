"""End to end, as a newcomer would: find the release in the catalog, download it with the real huggingface_hub
client (HF_ENDPOINT pointing at a live site), load it with PEFT, and verify signature and provenance."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests
import torch

# A live server, the real huggingface_hub client and PEFT loading: the integration tier (pyproject markers).
pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[3]
IDS = [[1, 2, 3, 4, 5, 6, 7, 8]]

# Runs in a fresh interpreter: huggingface_hub reads HF_ENDPOINT once, when it is imported.
CLIENT = """
import json, sys, torch
from huggingface_hub import hf_hub_download, snapshot_download
from peft import PeftModel
from transformers import AutoModelForCausalLM

repo_id, revision, base_path, out = sys.argv[1:]
result = {
    "snapshot": snapshot_download(repo_id),
    "one_file": hf_hub_download(repo_id, "adapter_config.json", revision=revision),
    "local_dir": snapshot_download(repo_id, revision=revision, local_dir=out + "/local"),
}
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), repo_id)
with torch.no_grad():
    torch.save(model(input_ids=torch.tensor(IDS)).logits, out + "/logits.pt")
print(json.dumps(result))
""".replace("IDS", repr(IDS))


def _env(tmp_path: Path, site: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_ENDPOINT": site, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}  # fmt: skip


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "federation", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.django_db(transaction=True)
def test_newcomer_finds_downloads_loads_and_verifies_a_release(live_server, release, tiny_checkpoint, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from releases.signing import public_key_path

    site = live_server.url
    # 1. The catalog links to the release page, which links to the zip and shows how to use it.
    catalog = requests.get(f"{site}/releases/", timeout=10).text
    page_url = site + re.search(r'href="(/releases/[^"]+/)"', catalog).group(1)
    page = requests.get(page_url, timeout=10).text
    assert release.repo_id in page and "HF_ENDPOINT" in page

    # 2. The real huggingface_hub client and PEFT, pointed at the site, download and load it.
    out = tmp_path / "client"
    out.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", CLIENT, release.repo_id, release.revision, str(tiny_checkpoint), str(out)],
        env=_env(tmp_path, site), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    paths = json.loads(run.stdout.strip().splitlines()[-1])
    released = {p.name: p.read_bytes() for p in Path(release.path).iterdir()}
    for folder in (Path(paths["snapshot"]), Path(paths["local_dir"])):
        assert {name: (folder / name).read_bytes() for name in released} == released
    assert Path(paths["one_file"]).read_bytes() == released["adapter_config.json"]

    # Same outputs as loading the folder directly, and not the base model's: the adapter really loaded.
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    with torch.no_grad():
        plain = base(input_ids=torch.tensor(IDS)).logits.clone()
        direct = PeftModel.from_pretrained(base, release.path)(input_ids=torch.tensor(IDS)).logits
    over_http = torch.load(out / "logits.pt")
    assert torch.allclose(over_http, direct, atol=1e-6)
    assert not torch.allclose(direct, plain, atol=1e-4)

    # 3. verify: the downloaded snapshot (symlinks into the hub cache), the local_dir copy, and straight from the URL.
    key = str(public_key_path())
    for folder in (paths["snapshot"], paths["local_dir"]):
        result = _cli("verify", folder, "--key", key)
        assert result.returncode == 0, result.stderr
    by_url = _cli("verify", page_url)  # the key comes from <site>/releases/signing-key.pub
    assert by_url.returncode == 0, by_url.stderr
    assert f"OK {release.repo_id}@{release.revision}" in by_url.stdout and release.key_fingerprint in by_url.stdout

    # 4. The browser route: the zip, unpacked, verifies too; a flipped byte in it does not.
    zip_url = site + re.search(r'href="(/releases/[^"]+\.zip)"', page).group(1)
    (tmp_path / "release.zip").write_bytes(requests.get(zip_url, timeout=30).content)
    with zipfile.ZipFile(tmp_path / "release.zip") as archive:
        archive.extractall(tmp_path / "unzipped")
    (unzipped,) = (tmp_path / "unzipped").iterdir()
    assert _cli("verify", str(unzipped), "--key", f"{site}/releases/signing-key.pub").returncode == 0
    weights = unzipped / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    tampered = _cli("verify", str(unzipped), "--key", key)
    assert tampered.returncode == 1 and "adapter_model.safetensors" in tampered.stderr
    assert "Traceback" not in tampered.stderr


@pytest.mark.django_db(transaction=True)
def test_a_yanked_release_is_not_served_to_the_hub_client(live_server, release, tmp_path):
    from releases.services import release_yank

    release_yank(release=release, by=None, reason="withdrawn")
    script = (
        "import sys\nfrom huggingface_hub import snapshot_download\nfrom huggingface_hub.errors import "
        "RepositoryNotFoundError\ntry:\n    snapshot_download(sys.argv[1])\nexcept RepositoryNotFoundError:\n"
        "    print('not found')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, release.repo_id], env=_env(tmp_path, live_server.url),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0 and "not found" in run.stdout, run.stderr[-2000:]
    assert release.repo_id not in requests.get(f"{live_server.url}/releases/", timeout=10).text
