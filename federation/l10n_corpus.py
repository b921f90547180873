"""A localization corpus: English -> language message pairs from gettext `.mo` catalogs, one community per region.

Software localization is real multilingual text that nobody here wrote and that is already on the machine: every
package with translations ships compiled gettext catalogs (Django alone carries ~98 languages). Each pair becomes
one instruction record, `{"instruction": "Translate to Indonesian: Save", "output": "Simpan", "group": "id"}`;
the group (the language code) lets the server report its held-out metrics per language.

It lives in the contributor package, beside `federation.corpus`, because a language community builds its *own*
data with it: `python -m federation l10n-corpus --catalogs path/to/their/locale --nodes "mine=tl"` turns the
catalogs they already maintain into records that pass `python -m federation validate`. The platform's demo uses it
on the installed Django's catalogs. Nothing here imports Django: the catalogs are files, read with our own parser.

Rules, each one a documented choice:
- Placeholders (`%(name)s`, `%s`, `%d`, `{0}`, `{name}`, `{}`) must be the same multiset on both sides; a pair
  whose placeholders differ is dropped (it would teach the model to break the software it localizes).
- Plurals: the singular msgid is paired with the form the catalog's own plural formula uses for n = 1 (msgstr[0]
  in every catalog seen); the plural msgid is dropped, because msgstr[1] is not "the plural" in a language with
  three or more forms (Russian's msgstr[1] is the 2-4 form), and a one-form language has no msgstr[1] at all.
- A message context (msgctxt) is not shown to the model. Duplicates are removed per language; a source that has two
  different translations (usually in two contexts) is ambiguous without its context and is dropped entirely.
- Untranslated entries (empty msgstr), the header and pairs longer than `max_chars` on either side are dropped.
- A language goes to exactly one node (a node per region or family); a language listed for two nodes is refused
  unless `split_shared` asks to deal its training pairs out between them.
- Held-out: a seeded fraction of each language's pairs (capped per language), never also in training. The file
  interleaves languages round robin, so a server that reads only its first N records still sees every language.
- Same catalogs and arguments give byte-identical files.
"""

from __future__ import annotations

import gettext
import importlib.util
import json
import random
import re
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from federation.corpus import _remove_stale_nodes, _write_if_changed
from federation.data import fingerprint, load_records

FORMAT = "bayanihan-l10n-corpus/1"
MO_MAGIC_LE = 0x950412DE
MO_MAGIC_BE = 0xDE120495
MAX_CHARS = 200
DEFAULT_HELDOUT_FRACTION = 0.1

# One node per region: the communities a localization campaign federates. Codes are gettext's (Django's) codes.
REGIONS: dict[str, tuple[str, ...]] = {
    "southeast-asia": ("id", "ms", "vi", "th", "km", "my"),
    "south-asia": ("hi", "bn", "ne", "ur", "ta", "te", "mr", "pa", "ml", "kn"),
    "africa": ("sw", "af", "ig", "kab", "am"),
}
# The demo's default: 8 languages on 3 nodes, the ones with the most pairs in Django's catalogs per region.
DEMO_NODES: dict[str, tuple[str, ...]] = {
    "southeast-asia": ("id", "ms", "vi"),
    "south-asia": ("hi", "bn", "ne"),
    "africa": ("sw", "af"),
}

# printf-style (%(name)s, %s, %05.2f; not the literal %%) and str.format-style ({0}, {name}, {}, {0:>3}; not {{ }}).
_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(?:\d+|\*)?(?:\.(?:\d+|\*))?[hlL]?[diouxXeEfFgGcrsa%]")
_FORMAT = re.compile(r"(?<!\{)\{([A-Za-z_][\w.]*|\d*)(?:![rsa])?(?::[^{}]*)?\}(?!\})")


def placeholders(text: str) -> Counter[str]:
    """The placeholders in `text`, as a multiset (`%%` is a literal percent sign, not a placeholder)."""
    found: Counter[str] = Counter(m.group(0) for m in _PRINTF.finditer(text) if m.group(0) != "%%")
    found.update("{" + m.group(1) + "}" for m in _FORMAT.finditer(text))
    return found


# ----------------------------------------------------------------------------------------------- .mo reading


@dataclass(frozen=True)
class MoEntry:
    msgid: str
    msgstrs: tuple[str, ...]
    context: str = ""
    msgid_plural: str = ""


@dataclass
class Catalog:
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    entries: list[MoEntry] = field(default_factory=list)

    def singular_index(self) -> int:
        """Which msgstr the catalog uses for n = 1, from its own Plural-Forms formula (0 when it has none)."""
        forms = self.headers.get("plural-forms", "")
        match = re.search(r"plural\s*=\s*([^;]+)", forms)
        if not match:
            return 0
        try:
            return int(gettext.c2py(match.group(1).strip())(1))
        except (ValueError, SyntaxError, RecursionError):
            return 0


class CatalogError(ValueError):
    """A file that is not a readable .mo catalog; the message names the file."""


def read_mo(path: str | Path) -> Catalog:
    """Parse a compiled gettext catalog (GNU .mo, either byte order) without importing anything that has one.

    The stdlib's GNUTranslations drops each entry's plural msgid and context, which the rules above need.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 28:
        raise CatalogError(f"{path}: too short to be a .mo catalog")
    (magic,) = struct.unpack("<I", data[:4])
    order = "<" if magic == MO_MAGIC_LE else ">" if magic == MO_MAGIC_BE else ""
    if not order:
        raise CatalogError(f"{path}: not a .mo catalog (bad magic number)")
    _revision, count, ids_at, strs_at = struct.unpack(order + "4I", data[4:20])
    if ids_at + 8 * count > len(data) or strs_at + 8 * count > len(data):
        raise CatalogError(f"{path}: truncated .mo catalog")

    def text(table: int, i: int) -> bytes:
        length, offset = struct.unpack(order + "2I", data[table + 8 * i : table + 8 * i + 8])
        if offset + length > len(data):
            raise CatalogError(f"{path}: truncated .mo catalog (entry {i})")
        return data[offset : offset + length]

    raw = [(text(ids_at, i), text(strs_at, i)) for i in range(count)]
    catalog = Catalog(path=str(path))
    charset = "utf-8"
    for key, value in raw:
        if key == b"":  # the header: "Name: value" lines
            for line in value.decode("utf-8", "replace").splitlines():
                name, sep, val = line.partition(":")
                if sep:
                    catalog.headers[name.strip().lower()] = val.strip()
            match = re.search(r"charset=([\w-]+)", catalog.headers.get("content-type", ""))
            charset = match.group(1) if match else "utf-8"
    for key, value in raw:
        if key == b"":
            continue
        try:
            msgid, msgstr = key.decode(charset), value.decode(charset)
        except (UnicodeDecodeError, LookupError) as exc:
            raise CatalogError(f"{path}: an entry is not valid {charset}: {exc}") from exc
        context, _, msgid = msgid.rpartition("\x04")
        singular, _, plural = msgid.partition("\x00")
        catalog.entries.append(MoEntry(singular, tuple(msgstr.split("\x00")), context, plural))
    return catalog


def language_name(catalog: Catalog, code: str) -> str:
    """The language's English name from the catalog's Language-Team header ("Indonesian (http://...)"), else
    its code."""
    team = catalog.headers.get("language-team", "")
    name = re.split(r"[(<]", team, maxsplit=1)[0].strip()
    return name if name and re.fullmatch(r"[A-Za-z][A-Za-z ()'.,-]{0,60}", name) else code


# ----------------------------------------------------------------------------------------------- pairs


@dataclass
class LanguagePairs:
    code: str
    name: str
    pairs: list[tuple[str, str]]  # (English source, translation), sorted, unique sources
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> how many entries
    catalogs: list[str] = field(default_factory=list)


def catalog_paths(roots: Iterable[Path], code: str) -> list[Path]:
    """Every `<root>/**/locale/<code>/LC_MESSAGES/*.mo` (also `<root>/<code>/LC_MESSAGES/*.mo`), sorted."""
    found: set[Path] = set()
    for root in roots:
        found.update(root.glob(f"{code}/LC_MESSAGES/*.mo"))
        found.update(root.glob(f"**/locale/{code}/LC_MESSAGES/*.mo"))
    return sorted(found)


def language_pairs(paths: Sequence[Path], code: str, max_chars: int = MAX_CHARS) -> LanguagePairs:
    """One language's clean pairs from its catalogs (the rules in the module docstring)."""
    dropped: Counter[str] = Counter()
    targets: dict[str, Counter[str]] = {}
    name = code
    for path in paths:
        catalog = read_mo(path)
        if name == code:
            name = language_name(catalog, code)
        singular = catalog.singular_index()
        for entry in catalog.entries:
            index = singular if entry.msgid_plural else 0
            target = entry.msgstrs[index] if index < len(entry.msgstrs) else ""
            source = entry.msgid
            if entry.msgid_plural:
                dropped["plural form (its singular kept)"] += 1
            if not source.strip() or not target.strip():
                dropped["untranslated"] += 1
            elif len(source) > max_chars or len(target) > max_chars:
                dropped[f"longer than {max_chars} characters"] += 1
            elif placeholders(source) != placeholders(target):
                dropped["placeholders differ"] += 1
            else:
                targets.setdefault(source, Counter())[target] += 1
    pairs = []
    for source in sorted(targets):
        options = targets[source]
        if len(options) == 1:
            pairs.append((source, next(iter(options))))
            dropped["duplicate"] += options.total() - 1
        else:
            dropped["ambiguous: several translations"] += options.total()
    dropped = Counter({k: v for k, v in dropped.items() if v})
    return LanguagePairs(code, name, pairs, dropped, [str(p) for p in paths])


def instruction(pair: tuple[str, str], name: str, code: str) -> dict[str, str]:
    source, target = pair
    return {"instruction": f"Translate to {name}: {source}", "output": target, "group": code}


# ----------------------------------------------------------------------------------------------- building


def default_roots() -> list[Path]:
    """The installed Django's folder (found without importing it), where its catalogs are; empty without Django."""
    spec = importlib.util.find_spec("django")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def _jsonl(rows: list[dict[str, str]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def _summary(path: Path, rows: list[dict[str, str]]) -> dict:
    # Fingerprinted as the loader reads the file, so it is the number `python -m federation validate` prints.
    return {
        "records": len(rows),
        "characters": sum(len(r["output"]) for r in rows),
        "fingerprint": fingerprint(load_records(path)) if rows else "",
    }


def _interleave(by_language: Mapping[str, list[dict[str, str]]]) -> list[dict[str, str]]:
    """Round robin over the languages (sorted), so any prefix of the file covers every language."""
    out: list[dict[str, str]] = []
    queues = {code: list(rows) for code, rows in sorted(by_language.items())}
    while any(queues.values()):
        for code in sorted(queues):
            if queues[code]:
                out.append(queues[code].pop(0))
    return out


def build_l10n_corpus(
    out_dir: Path | str,
    nodes: Mapping[str, Sequence[str]] | None = None,
    *,
    roots: Sequence[Path | str] | None = None,
    seed: int = 0,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    max_heldout_per_language: int | None = 24,
    max_train_per_language: int | None = None,
    max_chars: int = MAX_CHARS,
    split_shared: bool = False,
) -> dict:
    """Write <node>/train.jsonl per node, heldout.jsonl and manifest.json; return the manifest.

    `nodes`: node folder name -> language codes (default DEMO_NODES). `roots`: folders searched for catalogs
    (default: the installed Django's).
    """
    nodes = {name: tuple(codes) for name, codes in (nodes or DEMO_NODES).items()}
    if not nodes or not all(nodes.values()):
        raise ValueError("every node needs at least one language")
    for name in nodes:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise ValueError(f"node name {name!r}: use letters, digits, '-', '_' or '.'")
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    owners: dict[str, list[str]] = {}
    for name, codes in nodes.items():
        for code in codes:
            owners.setdefault(code, []).append(name)
    shared = sorted(code for code, names in owners.items() if len(names) > 1)
    if shared and not split_shared:
        raise ValueError(
            f"{', '.join(shared)}: listed for more than one node; a language belongs to one community "
            "(pass split_shared / --split-shared to deal its pairs out between those nodes)"
        )
    search = [Path(r) for r in (roots if roots is not None else default_roots())]
    if not search:
        raise ValueError("no catalog folders: Django is not installed here; pass the folders with the catalogs")

    out_dir = Path(out_dir)
    train: dict[str, list[dict[str, str]]] = {name: [] for name in nodes}
    heldout: dict[str, list[dict[str, str]]] = {}
    languages: dict[str, dict] = {}
    for code in sorted(owners):
        paths = catalog_paths(search, code)
        if not paths:
            raise ValueError(f"{code}: no .mo catalogs under {', '.join(map(str, search))}")
        found = language_pairs(paths, code, max_chars=max_chars)
        if len(found.pairs) < 2:
            raise ValueError(f"{code}: only {len(found.pairs)} usable pairs in its catalogs; need at least 2")
        rng = random.Random(f"{seed}:{code}")  # per language: adding a language changes no other's split
        order = list(range(len(found.pairs)))
        rng.shuffle(order)
        n_held = max(1, round(len(order) * heldout_fraction))
        if max_heldout_per_language is not None:
            n_held = max(1, min(n_held, max_heldout_per_language))
        held_idx, train_idx = sorted(order[:n_held]), sorted(order[n_held:])
        if max_train_per_language is not None and len(train_idx) > max_train_per_language:
            train_idx = sorted(rng.sample(train_idx, max_train_per_language))
        heldout[code] = [instruction(found.pairs[i], found.name, code) for i in held_idx]
        rows = [instruction(found.pairs[i], found.name, code) for i in train_idx]
        for k, name in enumerate(owners[code]):  # one owner: all of them; split_shared: dealt round robin
            train[name].extend(rows[k :: len(owners[code])])
        languages[code] = {
            "name": found.name,
            "nodes": owners[code],
            "pairs": len(found.pairs),
            "train": len(train_idx),
            "heldout": len(held_idx),
            "dropped": dict(sorted(found.dropped.items())),
            "catalogs": len(found.catalogs),
        }

    for name, rows in train.items():
        _write_if_changed(out_dir / name / "train.jsonl", _jsonl(rows))
    held_rows = _interleave(heldout)
    _write_if_changed(out_dir / "heldout.jsonl", _jsonl(held_rows))
    if all(re.fullmatch(r"node-\d+", n) for n in nodes):
        _remove_stale_nodes(out_dir, len(nodes))
    manifest = {
        "format": FORMAT,
        "source": "gettext .mo catalogs: " + ", ".join(sorted({str(p) for p in search})),
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "max_heldout_per_language": max_heldout_per_language,
        "max_train_per_language": max_train_per_language,
        "max_chars": max_chars,
        "languages": languages,
        "nodes": {
            name: {
                "languages": list(codes),
                "file": f"{name}/train.jsonl",
                **_summary(out_dir / name / "train.jsonl", train[name]),
            }
            for name, codes in nodes.items()
        },
        "heldout": {
            "file": "heldout.jsonl",
            "groups": {code: len(rows) for code, rows in sorted(heldout.items())},
            **_summary(out_dir / "heldout.jsonl", held_rows),
        },
    }
    _write_if_changed(out_dir / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def parse_nodes(spec: str) -> dict[str, tuple[str, ...]]:
    """`"sea=id,ms,vi;south-asia=hi,bn"` -> {node: codes}; the CLI's --nodes."""
    nodes: dict[str, tuple[str, ...]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, sep, codes = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{part!r}: expected NODE=code,code")
        nodes[name.strip()] = tuple(c.strip() for c in codes.split(",") if c.strip())
    if not nodes:
        raise ValueError("no nodes given")
    return nodes
