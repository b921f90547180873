"""Benchmark: release downloads through the site vs a plain file copy, and 200 concurrent downloads (not a test).

Run `make bench-downloads`. The whole platform runs for real, laid out exactly like `make serve` (Caddy in front of
uvicorn workers, downloads sent by Caddy through X-Accel-Redirect; Celery worker; see bench/site_stack.py) against its
own SQLite database under var/bench/downloads/.

1. Two releases are published through the real path (`releases.services.release_publish`), each from a finished
   campaign whose last round holds a real PEFT folder on a model with SmolLM2-135M's attention shapes (30 layers,
   hidden 576, 9 heads, 3 KV heads), fp32: the product's adapter, LoRA r=8 on q/k/v/o (921,600 parameters,
   3,686,400 bytes of tensors), and a ≈100 MB one, r=216 on the same modules. The base weights are random and the
   MLP/vocab shrunk: they never leave this process.
2. Single stream, for each file, interleaved so each path sees the same machine load, `--repeat` times each
   (`--repeat-large` for the 100 MB file):
   - plain `shutil.copyfile` of the stored blob (the reference: bytes/s the disk cache can move),
   - sha256 of the blob read locally (what verifying a download costs at least),
   - GET of the site's download URL with `http.client` into one buffer, written to disk (no hashing, no process to
     start: the transport alone, what the targets compare),
   - GET of the site's download URL (`release-file`), streamed with `requests`, written to disk, sha256 checked,
   - GET of the Hugging Face-compatible `/<org>/<name>/resolve/main/<file>`, the same way,
   - `huggingface_hub.hf_hub_download` with HF_ENDPOINT at the site, a fresh cache folder every time,
   - the same plain GET of the blob from a bare Caddy file_server (no Django: the ceiling of client and loopback),
   - the same plain GET of the same URL on one uvicorn process that streams the file itself (the layout before,
     started beside the new one so both see the same machine load).
   Ratio = download MB/s / copy MB/s (MB = 10^6 bytes).
3. `--concurrency` simultaneous downloads of the 3.7 MB file over loopback, one connection each: from one
   `curl --parallel` (site URL, resolve URL, and the layout before), and from httpx in one asyncio loop hashing as it
   reads (site URL): errors (non-200, connection errors, timeouts, short bodies, sha256 mismatch), latency
   percentiles, time to first byte, wall time, aggregate MB/s, the site's peak memory (workers and proxy, restarted
   before each burst), and whether the release's download counter moved by exactly the number of successful
   downloads.

The client runs on the same cores as the server, so every HTTP figure includes the client's own CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import REPO
from bench.report import Timer, write_section
from bench.site_stack import running_site, stop_on_signals
from federation.artifacts import ADAPTER_CONFIG, ADAPTER_WEIGHTS, round_folder

NAME = "downloads"
COMMAND = "make bench-downloads"
HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# SmolLM2-135M's attention shapes: all that a q/k/v/o LoRA adapter depends on.
SMOLLM2_SHAPE = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3}
CHUNK = 1 << 20
MB = 1e6
PLAIN_LABEL = "site download URL (`http.client`, to disk, no hashing)"
BEFORE_LABEL = "the same on one uvicorn process streaming the file (the layout before)"
STATIC_LABEL = "the same client, the blob from a bare Caddy file_server (no Django: this machine's ceiling)"
# (LoRA rank, label): the product's adapter and one of ≈100 MB (targets: 100 MB ≥ 0.8× a copy, 3.7 MB ≥ 0.5×).
FILES = ((8, "3.7 MB adapter (r=8)"), (216, "100 MB adapter (r=216)"))
TARGETS = {8: 0.5, 216: 0.8}
FIRST_BYTE_P99_TARGET = 1.0


@dataclass
class Target:
    """The published file and the URLs that serve it."""

    label: str
    release_pk: int
    repo_id: str
    revision: str
    size: int
    sha256: str
    blob: Path
    site_url: str
    resolve_url: str
    endpoint: str
    before_url: str = ""  # the same download URL on one uvicorn process that streams the file itself (before)
    static_url: str = ""  # the blob from a bare Caddy file_server, no Django (the machine's ceiling)


@dataclass
class Series:
    label: str
    seconds: list[float] = field(default_factory=list)


@dataclass
class Burst:
    route: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    first_bytes: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0
    bytes_ok: int = 0
    counter_delta: int = 0
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies)


# --- the release -------------------------------------------------------------------------------------------------


def build_adapter(folder: Path, rank: int) -> None:
    """A real PEFT folder (save_pretrained) with the product's LoRA config and SmolLM2-135M's adapter shapes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from federation.config import TrainConfig

    cfg = TrainConfig()
    config = LlamaConfig(vocab_size=256, intermediate_size=64, max_position_embeddings=512, **SMOLLM2_SHAPE)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    lora = LoraConfig(
        r=rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=cfg.modules,
        task_type="CAUSAL_LM",
    )  # fmt: skip
    model = get_peft_model(base, lora)
    with torch.no_grad():  # a fresh adapter has B = 0; a trained one has real, non-zero bytes
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    model.save_pretrained(folder)


def adapter_tensor_bytes(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():
            tensor = fh.get_tensor(key)
            total += tensor.numel() * tensor.element_size()
    return total


def publish_release(site: Any, rank: int, label: str) -> Target:
    """A finished campaign (rounds, nodes, participations) whose last round holds the adapter; then publish it."""
    from django.conf import settings
    from django.urls import reverse

    from campaigns.models import BaseCheckpoint, Campaign, Participation, Round
    from community.models import Node
    from federation.config import TrainConfig
    from releases.models import ReleaseFile
    from releases.selectors import entry_file, release_entry
    from releases.services import release_publish

    base = BaseCheckpoint.objects.filter(hf_id=HF_ID).first() or BaseCheckpoint.objects.create(
        name="smollm2-135m", hf_id=HF_ID, path=str(site.var / "no-base-weights"), files={"config.json": "ab" * 32},
        license="apache-2.0", note="benchmark: only the adapter's shapes matter",
    )  # fmt: skip
    campaign = Campaign.objects.create(
        name=f"Download benchmark r{rank}", base_model=base, data_task="python-docs", heldout_path="heldout.jsonl",
        num_rounds=1, train_config=TrainConfig().to_run_config(), status=Campaign.Status.COMPLETED,
        flwr_run_id="1",
    )  # fmt: skip
    nodes = [Node.objects.create(name=f"bench-r{rank}-{i}", flwr_node_id=str(900 + 10 * rank + i)) for i in range(2)]
    Round.objects.create(campaign=campaign, number=0, eval_loss=3.0, participants=0)
    final = Round.objects.create(campaign=campaign, number=1, eval_loss=2.5, participants=len(nodes))
    for i, node in enumerate(nodes):
        Participation.objects.create(
            round=final, node=node, samples=100 + i, tokens=10_000, data_fingerprint=f"{i}" * 64
        )
    folder = round_folder(Path(settings.DATA_DIR) / "campaigns" / str(campaign.pk), 1)
    build_adapter(folder, rank)
    final.adapter_files = {n: sha256_of(folder / n) for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}
    final.save()

    release = release_publish(campaign=campaign)
    row = ReleaseFile.objects.get(release=release, path=ADAPTER_WEIGHTS)
    entry = release_entry(release, ADAPTER_WEIGHTS)
    assert entry is not None
    org, name = release.repo_id.split("/", 1)
    site_path = reverse(
        "release-file", kwargs={"org": org, "name": name, "revision": release.revision, "path": ADAPTER_WEIGHTS}
    )
    resolve_path = reverse("hf-resolve", kwargs={"org": org, "name": name, "revision": "main", "path": ADAPTER_WEIGHTS})
    return Target(
        label=label, release_pk=release.pk, repo_id=release.repo_id, revision=release.revision, size=row.size,
        sha256=row.sha256, blob=entry_file(release, entry), site_url=site.url + site_path,
        resolve_url=site.url + resolve_path, endpoint=site.url,
    )  # fmt: skip


def download_count(target: Target) -> int:
    from releases.models import Release

    return Release.objects.get(pk=target.release_pk).download_count


# --- single stream -----------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def http_download(url: str, dest: Path, expected_sha256: str) -> None:
    """One fresh connection, streamed to disk, sha256 checked: what a careful script does."""
    import requests

    digest = hashlib.sha256()
    with requests.get(url, stream=True, timeout=60) as response, dest.open("wb") as out:
        response.raise_for_status()
        for chunk in response.iter_content(CHUNK):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != expected_sha256:
        raise RuntimeError(f"sha256 mismatch downloading {url}")


def plain_download(url: str, dest: Path) -> None:
    """A fresh connection, the body read into one reused buffer and written to disk, nothing else (no hashing, no
    process to start): the transport alone, what the targets compare with a copy."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    try:
        conn.request("GET", parts.path)
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status} downloading {url}")
        with dest.open("wb", buffering=0) as out:
            while n := response.readinto(buffer):
                out.write(view[:n])
    finally:
        conn.close()


def hub_download(target: Target, cache: Path) -> None:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(target.repo_id, ADAPTER_WEIGHTS, cache_dir=cache, endpoint=target.endpoint)
    if Path(path).stat().st_size != target.size:
        raise RuntimeError("huggingface_hub returned a file of the wrong size")


def single_stream(target: Target, repeat: int, scratch: Path) -> list[Series]:
    """Each repetition runs every path once, in the same order, after one untimed warm-up round."""
    out = scratch / "out.bin"

    def copy() -> None:
        shutil.copyfile(target.blob, out)

    def hash_only() -> None:
        if sha256_of(target.blob) != target.sha256:
            raise RuntimeError("stored blob does not match its sha256")

    def site() -> None:
        http_download(target.site_url, out, target.sha256)

    def site_plain() -> None:
        plain_download(target.site_url, out)
        if out.stat().st_size != target.size:
            raise RuntimeError("the download wrote a file of the wrong size")

    def static_plain() -> None:
        plain_download(target.static_url, out)
        if out.stat().st_size != target.size:
            raise RuntimeError("the download wrote a file of the wrong size")

    def before_plain() -> None:
        plain_download(target.before_url, out)
        if out.stat().st_size != target.size:
            raise RuntimeError("the download wrote a file of the wrong size")

    def resolve() -> None:
        http_download(target.resolve_url, out, target.sha256)

    def hub() -> None:
        cache = Path(tempfile.mkdtemp(prefix="hf-cache-", dir=scratch))
        try:
            hub_download(target, cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    paths: list[tuple[str, Callable[[], None]]] = [
        ("plain file copy (`shutil.copyfile` of the blob)", copy),
        ("sha256 of the blob, local read", hash_only),
        (PLAIN_LABEL, site_plain),
        ("site download URL (`requests`, streamed, sha256 checked)", site),
        ("HF API `resolve/main` (`requests`, streamed, sha256 checked)", resolve),
        ("`huggingface_hub.hf_hub_download`, fresh cache", hub),
        (BEFORE_LABEL, before_plain),
        (STATIC_LABEL, static_plain),
    ]
    series = [Series(label) for label, _ in paths]
    for _, action in paths:  # warm-up: page cache, imports, the web server's first requests
        action()
    for i in range(repeat):
        for entry, (_, action) in zip(series, paths, strict=True):
            entry.seconds.append(timed(action))
        print(f"  single stream: {i + 1}/{repeat}", file=sys.stderr, end="\r", flush=True)
    print(file=sys.stderr)
    out.unlink(missing_ok=True)
    return series


# --- concurrent --------------------------------------------------------------------------------------------------


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MB, from /proc (0, 0 where that cannot be read)."""
    values = {"VmRSS:": 0.0, "VmHWM:": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line else ""
            if key in values:
                values[key] = int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return values["VmRSS:"], values["VmHWM:"]


async def one_download(client: Any, url: str, target: Target, start: asyncio.Event, burst: Burst) -> None:
    import httpx

    await start.wait()
    started = time.perf_counter()
    first: float | None = None
    digest = hashlib.sha256()
    received = 0
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                burst.errors[f"HTTP {response.status_code}"] += 1
                return
            async for chunk in response.aiter_raw():  # as received: the first one times the first byte
                if first is None:
                    first = time.perf_counter() - started
                digest.update(chunk)
                received += len(chunk)
    except httpx.TimeoutException:
        burst.errors["timeout"] += 1
        return
    except httpx.ConnectError:
        burst.errors["connection refused/failed"] += 1
        return
    except httpx.HTTPError as exc:
        burst.errors[type(exc).__name__] += 1
        return
    if received != target.size:
        burst.errors["short body"] += 1
    elif digest.hexdigest() != target.sha256:
        burst.errors["sha256 mismatch"] += 1
    else:
        burst.latencies.append(time.perf_counter() - started)
        burst.first_bytes.append(first or 0.0)
        burst.bytes_ok += received


async def _burst(route: str, url: str, target: Target, concurrency: int, timeout: float) -> Burst:
    import httpx

    burst = Burst(route, concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout)) as client:
        start = asyncio.Event()
        tasks = [asyncio.create_task(one_download(client, url, target, start, burst)) for _ in range(concurrency)]
        await asyncio.sleep(0.05)  # every task is waiting on the event: they all start together
        began = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        burst.wall = time.perf_counter() - began
    return burst


def curl_burst(route: str, url: str, target: Target, concurrency: int, timeout: float, scratch: Path) -> Burst:
    """`concurrency` downloads at once from one `curl --parallel` (C, one connection each): unlike a Python client
    it does not itself become the bottleneck, so first byte and latency are the server's. Files are checked
    (size and sha256) after the burst, outside the timing."""
    folder = scratch / "burst"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = folder / "curl.config"
    config.write_text("".join(f'url = "{url}"\noutput = "{folder / f"{i}.bin"}"\n' for i in range(concurrency)))
    burst = Burst(route, concurrency)
    began = time.perf_counter()
    result = subprocess.run(
        ["curl", "--silent", "--parallel", "--parallel-immediate", "--parallel-max", str(concurrency),
         "--max-time", f"{timeout:g}", "--config", str(config),
         "--write-out", "%{http_code} %{time_starttransfer} %{time_total} %{size_download} %{filename_effective}\n"],
        capture_output=True, text=True,
    )  # fmt: skip
    burst.wall = time.perf_counter() - began
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()]
    for row in rows:
        code, first, total, size = row[0], float(row[1]), float(row[2]), int(row[3])
        path = Path(row[4]) if len(row) > 4 else None
        if code != "200":
            burst.errors[f"HTTP {code}" if code != "000" else "connection failed/timeout"] += 1
        elif size != target.size:
            burst.errors["short body"] += 1
        elif path is None or sha256_of(path) != target.sha256:
            burst.errors["sha256 mismatch"] += 1
        else:
            burst.latencies.append(total)
            burst.first_bytes.append(first)
            burst.bytes_ok += size
    if len(rows) < concurrency:
        burst.errors["no answer"] += concurrency - len(rows)
    shutil.rmtree(folder, ignore_errors=True)
    return burst


def start_before(site: Any, target_urls: list[str]) -> tuple[dict[str, str], int]:
    """The layout before Caddy and several workers, beside the new one in the same run: one uvicorn process on TCP,
    Django streaming the file itself (DOWNLOADS_X_ACCEL off). Returns each URL rewritten to it, and its pid."""
    from federation import procs

    port = procs.free_port()
    proc = site.stack.supervisor.start(
        "web-before",
        [sys.executable, "-m", "uvicorn", "bayanihan_site.asgi:application", "--port", str(port), "--no-access-log"],
        env={**site.env, "DOWNLOADS_X_ACCEL": "0"},
        cwd=REPO / "platform",
    )
    procs.wait_http(f"http://127.0.0.1:{port}/releases/", 60, proc)
    return {url: url.replace(f":{site.port}/", f":{port}/", 1) for url in target_urls}, proc.pid


def blob_root_of(target: Target) -> Path:
    return target.blob.parent.parent


def start_static(site: Any, blob_root: Path) -> tuple[str, int]:
    """The ceiling on this machine: a bare Caddy file_server over the blob store, no Django in the path. Returns
    its base URL and pid."""
    import json

    from federation import procs
    from stack.proxy import caddy_command, caddy_env

    port = procs.free_port()
    folder = site.var / "static-caddy"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "caddy.json"
    server = {
        "listen": [f"127.0.0.1:{port}"],
        "routes": [{"handle": [{"handler": "file_server", "root": str(blob_root)}]}],
    }
    config.write_text(json.dumps({"admin": {"disabled": True}, "apps": {"http": {"servers": {"static": server}}}}))
    proc = site.stack.supervisor.start("static-caddy", caddy_command(config), env=caddy_env(folder), cwd=folder)
    procs.wait_http(f"http://127.0.0.1:{port}/", 60, proc)
    return f"http://127.0.0.1:{port}", proc.pid


def reset_peak_rss(pid: int) -> None:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak) to the current RSS; ignored where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def web_pids(site: Any) -> list[int]:
    """The site's processes: uvicorn's supervisor, its workers and the front proxy (Caddy)."""
    import psutil

    pids = []
    for name in ("web", "web-proxy"):
        pid = site.stack.supervisor.pid(name)
        pids.append(pid)
        try:
            pids += [child.pid for child in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            pass
    return pids


def restart_web(site: Any, warm_url: str) -> list[int]:
    """A fresh site (workers and proxy) for each burst, so its memory figures are that burst's alone; a few GETs
    warm up the workers."""
    import requests

    site.stack.stop_web()
    site.stack.start_web(site.port, site.env)
    for _ in range(2 * site.stack.web_workers):
        requests.get(warm_url, timeout=60).raise_for_status()
    return web_pids(site)


def concurrent(
    target: Target, route: str, url: str, concurrency: int, timeout: float, pids: list[int], scratch: Path | None
) -> Burst:
    """One burst: with `scratch`, from curl (curl_burst); without, from httpx in this Python process."""
    before = download_count(target)
    for pid in pids:
        reset_peak_rss(pid)
    rss_before = sum(rss_mb(pid)[0] for pid in pids)
    if scratch is not None:
        burst = curl_burst(route, url, target, concurrency, timeout, scratch)
    else:
        burst = asyncio.run(_burst(route, url, target, concurrency, timeout))
    burst.counter_delta = download_count(target) - before
    burst.rss_before_mb = rss_before
    # The sum of each process's own peak: an upper bound on the site's peak (they need not peak together).
    burst.rss_peak_mb = sum(rss_mb(pid)[1] for pid in pids)
    return burst


# --- figures -----------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def rate(size: int, seconds: float) -> float:
    return size / seconds / MB if seconds > 0 else float("nan")


def median_rate(series: Series, size: int) -> float:
    """The median of the per-repetition rates (what every table and sentence quotes)."""
    return statistics.median(rate(size, t) for t in series.seconds)


def single_table(series: list[Series], size: int) -> str:
    copy_rate = median_rate(series[0], size)
    lines = [
        "| Path | MB/s (median) | MB/s p25–p75 | MB/s min–max | ms (median) | ÷ plain copy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in series:
        rates = [rate(size, t) for t in s.seconds]
        median = statistics.median(rates)
        lines.append(
            f"| {s.label} | {median:,.0f} | {percentile(rates, 25):,.0f}–{percentile(rates, 75):,.0f} "
            f"| {min(rates):,.0f}–{max(rates):,.0f} | {statistics.median(s.seconds) * 1e3:.1f} "
            f"| {median / copy_rate:.3f} |"
        )
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f}"


def burst_table(bursts: list[Burst]) -> str:
    lines = [
        "| Route | Downloads | OK | Errors | p50 ms | p95 ms | p99 ms | max ms | first byte p50 / p99 ms "
        "| Wall s | Aggregate MB/s | Counter moved by | Site RSS before → peak MB |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in bursts:
        errors = ", ".join(f"{kind}: {n}" for kind, n in b.errors.most_common()) or "0"
        lines.append(
            f"| {b.route} | {b.concurrency} | {b.ok} | {errors} | {ms(percentile(b.latencies, 50))} "
            f"| {ms(percentile(b.latencies, 95))} | {ms(percentile(b.latencies, 99))} "
            f"| {ms(max(b.latencies, default=float('nan')))} "
            f"| {ms(percentile(b.first_bytes, 50))} / {ms(percentile(b.first_bytes, 99))} | {b.wall:.2f} "
            f"| {rate(b.bytes_ok, b.wall):,.0f} | {b.counter_delta} | {b.rss_before_mb:,.0f} → {b.rss_peak_mb:,.0f} |"
        )
    return "\n".join(lines)


def findings(target: Target, series: list[Series]) -> str:
    """Plain sentences computed from one file's single-stream figures."""
    size = target.size
    med = {s.label: median_rate(s, size) for s in series}
    copy, sha, plain, site, resolve, hub, before, static = (med[s.label] for s in series)
    hub_extra = statistics.median(series[5].seconds) - statistics.median(series[4].seconds)
    return (
        f"{target.label}: a plain client (no hashing) downloads it at {plain:,.0f} MB/s, {plain / copy:.2f}× copying "
        f"the stored file ({copy:,.0f} MB/s). A Python client that checks the sha256 as it goes gets "
        f"{site:,.0f} MB/s through the site's download URL and {resolve:,.0f} MB/s through the HF-compatible "
        f"resolve URL "
        f"({site / copy:.2f}× and {resolve / copy:.2f}× the copy): hashing alone runs at {sha:,.0f} MB/s here "
        f"({sha / copy:.2f}× the copy), so a checked download cannot reach the copy's rate whatever the server does. "
        f"`hf_hub_download` reaches {hub:,.0f} MB/s ({hub / copy:.2f}×); its HEAD request, cache folder and rename "
        f"cost {hub_extra * 1e3:+.0f} ms per file over a bare GET of the same URL. The layout before (one uvicorn "
        f"process, Django streaming) moved it at {before:,.0f} MB/s to the same client in the same run: the proxy's "
        f"sendfile is {plain / before:.2f}× that. A bare Caddy file_server with no Django at all gives the same "
        f"client {static:,.0f} MB/s ({static / copy:.2f}× the copy): the site reaches {plain / static:.2f}× of what "
        f"this client and loopback can take here."
    )


def burst_findings(bursts: list[Burst], target: Target, single: float, copy: float) -> str:
    out = []
    for b in bursts:
        failed = sum(b.errors.values())
        if not b.ok:
            out.append(f"All {b.concurrency} simultaneous downloads through the {b.route} failed: {dict(b.errors)}.")
            continue
        p50, p99 = percentile(b.latencies, 50), percentile(b.latencies, 99)
        fb99 = percentile(b.first_bytes, 99)
        agg = rate(b.bytes_ok, b.wall)
        counter = (
            "matches the successful downloads"
            if b.counter_delta == b.ok
            else f"moved by {b.counter_delta} for {b.ok} successful downloads"
        )
        if b.route.startswith("ceiling"):
            counter = "did not move (no Django: this route only measures the machine)"
        growth = b.rss_peak_mb - b.rss_before_mb
        verdict = "met" if fb99 <= FIRST_BYTE_P99_TARGET and not failed else "NOT met"
        target_note = f" (target ≤ {FIRST_BYTE_P99_TARGET:g} s: {verdict})" if _is_target_burst(b) else ""
        out.append(
            f"{b.concurrency} simultaneous downloads of the {target.label} through the {b.route}: {failed} failed "
            f"({failed / b.concurrency:.0%}); the 99th percentile waited {fb99:.2f} s for its first byte{target_note}; "
            f"the median client finished in {p50:.2f} s and the 99th percentile in {p99:.2f} s, the burst in "
            f"{b.wall:.2f} s. Together they moved {agg:,.0f} MB/s, {agg / single:.2f}× one checked download alone "
            f"({agg / copy:.3f} of the plain copy's rate). The download counter {counter}. The site's processes "
            f"(workers and proxy) peaked at most {max(growth, 0):,.0f} MB above their idle size."
        )
    return "\n\n".join(out)


def _is_target_burst(burst: Burst) -> bool:
    """The bursts the first-byte target is about: the new layout, measured by a client that is not the bottleneck."""
    return "(curl)" in burst.route and not burst.route.startswith(("before", "ceiling"))


def targets_line(results: list[tuple[Target, list[Series], int]], bursts: list[Burst]) -> str:
    parts = []
    for target, series, rank in results:
        copy = median_rate(series[0], target.size)
        plain = median_rate(series[2], target.size)
        goal = TARGETS[rank]
        verdict = "met" if plain / copy >= goal else "NOT met"
        parts.append(f"{target.label} ≥ {goal}× a copy (plain client): {plain / copy:.2f}× ({verdict})")
    for b in (b for b in bursts if _is_target_burst(b)):
        fb99 = percentile(b.first_bytes, 99)
        ok = fb99 <= FIRST_BYTE_P99_TARGET and not sum(b.errors.values())
        parts.append(
            f"{b.concurrency} concurrent ({b.route}): first byte p99 {fb99:.2f} s, "
            f"{sum(b.errors.values())} errors ({'met' if ok else 'NOT met'})"
        )
    return "**Targets (issue 16).** " + "; ".join(parts) + "."


def load() -> str:
    """1-minute load average over the core count: other work on the machine skews every figure."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return f"{os.getloadavg()[0]:.1f} on {cores} cores"


def body(
    results: list[tuple[Target, list[Series], int]],
    bursts: list[Burst],
    workers: int,
    args: argparse.Namespace,
    load_before: str,
) -> str:
    small = results[0][0]
    files = "; ".join(
        f"{t.label}: `{t.repo_id}@{t.revision[:12]}` `{ADAPTER_WEIGHTS}`, {t.size:,} bytes "
        f"({tensor_bytes:,} bytes of fp32 tensors)"
        for t, _, tensor_bytes in ((t, s, adapter_tensor_bytes(t.blob)) for t, s, _ in results)
    )
    tables = "\n\n".join(
        f"**{t.label}** ({args.repeat if rank == FILES[0][0] else args.repeat_large} repetitions)\n\n"
        f"{single_table(series, t.size)}"
        for t, series, rank in results
    )
    small_series = results[0][1]
    copy = median_rate(small_series[0], small.size)
    single = median_rate(small_series[3], small.size)
    return (
        f"Files (LoRA on q/k/v/o, SmolLM2-135M shapes): {files}. Served as `make serve` serves them: Caddy in front "
        f"of {workers} uvicorn workers (Unix socket); Django checks access, ETag and Range and counts the download, "
        f"then answers with X-Accel-Redirect and Caddy sends the blob with sendfile; all over loopback. Single stream: "
        f"each path interleaved after one warm-up; MB = 10⁶ bytes. Concurrent: {args.concurrency} downloads of the "
        f"{small.label} started at once per route, one connection each, {args.timeout:g} s timeout, every file's "
        f"size and sha256 checked: from one `curl --parallel` (the client that does not itself become the "
        f"bottleneck: the first-byte target is read there), from httpx in one Python process that hashes as it "
        f"reads (what the earlier runs measured), and from curl against the layout before (one uvicorn process "
        f"streaming, started beside the new one in the same run); the clients share the CPU cores with the server. "
        f"Load average: {load_before} before the measurements, {load()} after.\n\n"
        f"{tables}\n\n{burst_table(bursts)}\n\n{targets_line(results, bursts)}\n\n"
        f"**What this shows.** "
        + "\n\n".join(findings(t, series) for t, series, _ in results)
        + "\n\n"
        + burst_findings(bursts, small, single, copy)
        + "\n"
    )


# --- main --------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=30, help="timed repetitions of each single-stream path")
    parser.add_argument("--repeat-large", type=int, default=10, help="the same for the 100 MB file")
    parser.add_argument("--concurrency", type=int, default=200, help="simultaneous downloads per route")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-download timeout in the burst (s)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave docs/benchmarks.md alone")
    return parser.parse_args(argv)


def hub_environment(scratch: Path, endpoint: str) -> None:
    """huggingface_hub reads these when imported: set them first (and pass endpoint= explicitly all the same)."""
    for key in [k for k in os.environ if k.startswith("HF_")]:
        del os.environ[key]
    os.environ.update(
        HF_ENDPOINT=endpoint, HF_HOME=str(scratch / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_XET="1",
    )  # fmt: skip
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import constants

        if constants.ENDPOINT != endpoint:
            print("note: huggingface_hub was imported before HF_ENDPOINT was set; passing endpoint=", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    timer = Timer()
    with running_site(NAME, superlink=False) as site:
        scratch = site.var / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        hub_environment(scratch, site.url)
        targets = []
        for rank, label in FILES:
            print(f"publishing the {label} release…", file=sys.stderr)
            target = publish_release(site, rank, label)
            print(f"release {target.repo_id}@{target.revision[:12]}: {target.size:,} bytes", file=sys.stderr)
            targets.append((rank, target))
        before_urls, before_pid = start_before(site, [t.site_url for _, t in targets])
        static_base, static_pid = start_static(site, blob_root_of(targets[0][1]))
        for _, target in targets:
            target.before_url = before_urls[target.site_url]
            target.static_url = f"{static_base}/{target.sha256[:2]}/{target.sha256}"
        load_before = load()
        results = []
        for rank, target in targets:
            repeat = args.repeat if rank == FILES[0][0] else args.repeat_large
            results.append((target, single_stream(target, repeat, scratch), rank))
        small = targets[0][1]
        bursts = []
        runs = (
            ("site download URL (curl)", small.site_url, scratch),
            ("HF API resolve URL (curl)", small.resolve_url, scratch),
            ("site download URL (httpx, one Python process)", small.site_url, None),
        )
        for route, url, curl_scratch in runs:
            print(f"  {args.concurrency} concurrent downloads: {route}…", file=sys.stderr)
            pids = restart_web(site, url)
            bursts.append(concurrent(small, route, url, args.concurrency, args.timeout, pids, curl_scratch))
        route = "before: one uvicorn process streaming (curl)"
        print(f"  {args.concurrency} concurrent downloads: {route}…", file=sys.stderr)
        bursts.append(concurrent(small, route, small.before_url, args.concurrency, args.timeout, [before_pid], scratch))
        route = "ceiling: bare Caddy file_server, no Django (curl)"
        print(f"  {args.concurrency} concurrent downloads: {route}…", file=sys.stderr)
        bursts.append(concurrent(small, route, small.static_url, args.concurrency, args.timeout, [static_pid], scratch))
        site.stack.check()  # the web server and worker must have survived the load
        text = body(results, bursts, site.stack.web_workers, args, load_before)
    title = "Downloads: site and HF API vs a plain copy; concurrent downloads"
    write_section(NAME, title, text, COMMAND, timer, dry_run=args.no_write)
    return 0


if __name__ == "__main__":
    stop_on_signals()  # before anything is started, so nothing can be left behind
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: the site's processes were stopped", file=sys.stderr)
        sys.exit(130)
