"""The demo corpus: CPython's own documentation, split non-IID across contributors.

The text comes from the running interpreter (the `pydoc_data` help topics and the
docstrings of a fixed list of standard-library modules), so it is made on the machine,
needs no download, and nobody here wrote it. Each contributor gets different *topics*,
which is the realistic federated case (non-IID): no single node sees everything, and
the shared held-out set shows whether the federation learned more than any one node.

It ships to contributors, unlike the test-only tooling: `python -m federation demo-corpus` is their command when
they have no data yet (README, "No data of your own yet?").
"""

from __future__ import annotations

import importlib
import inspect
import json
import platform
import random
import re
import textwrap
from pathlib import Path

from federation.data import Record, fingerprint

MIN_CHARS = 300
MAX_CHARS = 900
# A chunk may grow past MAX_CHARS only to avoid leaving a fragment under MIN_CHARS.
HARD_MAX_CHARS = MAX_CHARS + MIN_CHARS

# Module docstrings by theme; each list is one topic group. Only modules that import
# with no side effects and exist in every CPython build we support.
MODULE_GROUPS: dict[str, tuple[str, ...]] = {
    "text-and-data": (
        "json",
        "re",
        "string",
        "textwrap",
        "csv",
        "sqlite3",
        "email",
        "zipfile",
        "tarfile",
        "gzip",
        "difflib",
        "html",
    ),
    "system-and-io": (
        "os",
        "pathlib",
        "shutil",
        "tempfile",
        "subprocess",
        "logging",
        "argparse",
        "io",
        "glob",
        "fnmatch",
    ),
    "concurrency-and-net": (
        "threading",
        "asyncio",
        "socket",
        "http.client",
        "urllib.parse",
        "queue",
        "selectors",
        "concurrent.futures",
    ),
    "numbers-and-tools": (
        "math",
        "statistics",
        "random",
        "decimal",
        "fractions",
        "collections",
        "itertools",
        "functools",
        "datetime",
        "hashlib",
        "hmac",
        "secrets",
        "unittest",
        "doctest",
        "inspect",
        "typing",
        "dataclasses",
        "enum",
    ),
}

# pydoc topics are either about the language (syntax, statements, expressions) or the
# data model (types, objects, special methods). Rule: a topic is "datamodel" when its
# name contains any of these markers, otherwise "language". It sorts e.g. "typesseq",
# "numeric-types", "bltin-null-object", "specialnames", "string-methods" into datamodel
# and "assert", "calls", "execmodel", "formatstrings" into language.
DATAMODEL_MARKERS = (
    "types",
    "bltin-",
    "special",
    "methods",
    "customization",
    "attribute-access",
    "objects",
    "context-managers",
    "truth",
    "dict",
)

SOURCE_DESCRIPTION = (
    "CPython documentation shipped with the interpreter: pydoc_data.topics help topics "
    "and docstrings of standard-library modules (and their public classes and functions)"
)


def topic_group(name: str) -> str:
    return "datamodel" if any(m in name for m in DATAMODEL_MARKERS) else "language"


# ------------------------------------------------------------------------- sources


def _owned_by(obj: object, module: str) -> bool:
    # Re-exports from other modules would duplicate their docs; C accelerators such as
    # _csv or _functools do count as the module's own.
    owner = getattr(obj, "__module__", None) or ""
    short = module.rsplit(".", 1)[-1]
    return owner == module or owner.startswith(module + ".") or owner == "_" + short


def module_text(name: str) -> str:
    """A module's docstring followed by those of its public classes and functions."""
    module = importlib.import_module(name)
    parts = []
    if module.__doc__:
        parts.append(f"Module {name}\n{inspect.cleandoc(module.__doc__)}")
    public = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    for attr in sorted(set(public)):
        obj = getattr(module, attr, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)) or not _owned_by(obj, name):
            continue
        # obj.__doc__, not inspect.getdoc: getdoc falls back to a parent class's doc,
        # which would repeat the same text under many names.
        doc = obj.__doc__
        if isinstance(doc, str) and doc.strip():
            # Name on the line right above its doc, so chunking never strands a title.
            parts.append(f"{name}.{attr}\n{inspect.cleandoc(doc)}")
    return "\n\n".join(parts)


def _sources() -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """{group: [(source name, text), ...]} and the modules this Python lacks."""
    from pydoc_data.topics import topics

    groups: dict[str, list[tuple[str, str]]] = {}
    for name in sorted(topics):
        groups.setdefault(topic_group(name), []).append((f"topic:{name}", topics[name]))
    missing = []
    for group, modules in MODULE_GROUPS.items():
        for name in modules:
            try:
                text = module_text(name)
            except ImportError:  # e.g. a Python built without _sqlite3
                missing.append(name)
                continue
            if text:
                groups.setdefault(group, []).append((f"module:{name}", text))
    return groups, missing


# ------------------------------------------------------------------------ chunking


def _pieces(paragraph: str) -> list[str]:
    """A paragraph, or bits of it no longer than MAX_CHARS, cut at lines then spaces."""
    if len(paragraph) <= MAX_CHARS:
        return [paragraph]
    pieces: list[str] = []
    current = ""
    for line in paragraph.split("\n"):
        for bit in textwrap.wrap(line, MAX_CHARS) if len(line) > MAX_CHARS else [line]:
            if current and len(current) + 1 + len(bit) > MAX_CHARS:
                pieces.append(current)
                current = ""
            current = f"{current}\n{bit}" if current else bit
    if current:
        pieces.append(current)
    return pieces


def chunk_text(text: str) -> list[str]:
    """Paragraph-aligned chunks of roughly MIN_CHARS..MAX_CHARS characters."""
    paragraphs = [p.strip("\n") for p in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n"))]
    pieces = [piece for p in paragraphs if p.strip() for piece in _pieces(p)]
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        grown = len(current) + 2 + len(piece)
        if current and (grown > HARD_MAX_CHARS or (grown > MAX_CHARS and len(current) >= MIN_CHARS)):
            chunks.append(current)
            current = ""
        current = f"{current}\n\n{piece}" if current else piece
    if current:
        if chunks and len(current) < MIN_CHARS and len(chunks[-1]) + 2 + len(current) <= HARD_MAX_CHARS:
            chunks[-1] = f"{chunks[-1]}\n\n{current}"
        else:
            chunks.append(current)
    return chunks


def grouped_chunks() -> tuple[dict[str, list[str]], dict[str, list[str]], list[str]]:
    """({group: chunks}, {group: source names}, missing modules), duplicates removed."""
    sources, missing = _sources()
    seen: set[str] = set()
    chunks: dict[str, list[str]] = {}
    names: dict[str, list[str]] = {}
    for group in sorted(sources):
        names[group] = [source for source, _ in sources[group]]
        chunks[group] = []
        for _, text in sources[group]:
            for chunk in chunk_text(text):
                # The same text twice would put it on a node *and* in held-out.
                if chunk not in seen:
                    seen.add(chunk)
                    chunks[group].append(chunk)
    return chunks, names, missing


# ------------------------------------------------------------------------ splitting


def _units(chunks: dict[str, list[str]], n: int) -> list[tuple[str, list[str]]]:
    """Topic units to deal out: the groups, with the largest halved until there are n."""
    units = [(group, list(items)) for group, items in sorted(chunks.items())]
    while len(units) < n:
        i = max(range(len(units)), key=lambda k: (len(units[k][1]), -k))
        name, items = units[i]
        if len(items) < 2:
            raise ValueError(f"not enough text to give {n} contributors distinct topics")
        half = len(items) // 2
        # Halves of a group stay contiguous, hence still about the same few sources.
        units[i : i + 1] = [(f"{name}/a", items[:half]), (f"{name}/b", items[half:])]
    return units


def _sample(items: list[str], k: int | None, rng: random.Random) -> list[str]:
    """k items, seeded, kept in their original order (or all of them)."""
    if k is None or k >= len(items):
        return list(items)
    keep = sorted(rng.sample(range(len(items)), k))
    return [items[i] for i in keep]


def _write_if_changed(path: Path, content: str) -> None:
    # Rewriting identical bytes would still bump mtimes; skipping keeps reruns a true no-op.
    data = content.encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(data)
    partial.replace(path)


def _jsonl(chunks: list[str]) -> str:
    return "".join(json.dumps({"text": c}, ensure_ascii=False) + "\n" for c in chunks)


def _summary(chunks: list[str]) -> dict:
    records = [Record(kind="text", text=c) for c in chunks]
    return {
        "chunks": len(chunks),
        "characters": sum(len(c) for c in chunks),
        "fingerprint": fingerprint(records),
    }


def build_demo_corpus(
    out_dir: Path | str,
    n_contributors: int = 3,
    seed: int = 0,
    heldout_fraction: float = 0.1,
    max_chunks_per_node: int | None = None,
    max_heldout: int | None = None,
) -> dict:
    """Write node-K/train.jsonl for each contributor, heldout.jsonl and manifest.json.

    Same arguments and same Python version give byte-identical files. Returns the
    manifest.
    """
    if n_contributors < 1:
        raise ValueError("n_contributors must be at least 1")
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    chunks, names, missing = grouped_chunks()

    # Held-out first, from every group, so evaluation covers every node's topics and
    # none of the others'.
    heldout_by_group: dict[str, list[str]] = {}
    for group, items in chunks.items():
        k = max(1, round(len(items) * heldout_fraction))
        picked = set(rng.sample(range(len(items)), k))
        heldout_by_group[group] = [c for i, c in enumerate(items) if i in picked]
        chunks[group] = [c for i, c in enumerate(items) if i not in picked]
    heldout = _cap_heldout(heldout_by_group, max_heldout, rng)
    kept = set(heldout)

    nodes: dict[str, dict] = {}
    contents: dict[str, list[str]] = {}
    units = _units(chunks, n_contributors)
    for k in range(n_contributors):
        mine = units[k::n_contributors]  # round robin over units sorted by name
        node = f"node-{k + 1}"
        contents[node] = _sample([c for _, items in mine for c in items], max_chunks_per_node, rng)
        nodes[node] = {
            "groups": [name for name, _ in mine],
            "file": f"{node}/train.jsonl",
            **_summary(contents[node]),
        }

    for node, items in contents.items():
        _write_if_changed(out_dir / node / "train.jsonl", _jsonl(items))
    _write_if_changed(out_dir / "heldout.jsonl", _jsonl(heldout))
    _remove_stale_nodes(out_dir, n_contributors)

    manifest = {
        "format": "bayanihan-demo-corpus/1",
        "source": SOURCE_DESCRIPTION,
        "python": platform.python_version(),
        "seed": seed,
        "n_contributors": n_contributors,
        "heldout_fraction": heldout_fraction,
        "max_chunks_per_node": max_chunks_per_node,
        "max_heldout": max_heldout,
        "chunk_chars": [MIN_CHARS, MAX_CHARS],
        "groups": {
            g: {"sources": names[g], "chunks": len(chunks[g]) + len(heldout_by_group[g])} for g in sorted(names)
        },
        "modules_missing": missing,
        "nodes": nodes,
        "heldout": {
            "file": "heldout.jsonl",
            "groups": {g: sum(c in kept for c in items) for g, items in heldout_by_group.items()},
            **_summary(heldout),
        },
    }
    _write_if_changed(out_dir / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def _cap_heldout(by_group: dict[str, list[str]], cap: int | None, rng: random.Random) -> list[str]:
    """All held-out chunks, or `cap` of them drawn round robin so every group stays in."""
    if cap is None:
        return [c for g in sorted(by_group) for c in by_group[g]]
    queues = {g: rng.sample(items, len(items)) for g, items in sorted(by_group.items())}
    picked: set[str] = set()
    while len(picked) < cap and any(queues.values()):
        for g in sorted(queues):
            if queues[g] and len(picked) < cap:
                picked.add(queues[g].pop())
    return [c for g in sorted(by_group) for c in by_group[g] if c in picked]


def _remove_stale_nodes(out_dir: Path, n_contributors: int) -> None:
    # A rerun with fewer contributors must not leave an old node's data looking current.
    for path in out_dir.glob("node-*/train.jsonl"):
        number = path.parent.name.removeprefix("node-")
        if number.isdigit() and int(number) > n_contributors:
            path.unlink()
            if not any(path.parent.iterdir()):
                path.parent.rmdir()
