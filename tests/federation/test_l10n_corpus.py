from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import pytest

from federation.data import fingerprint, load_records
from federation.l10n_corpus import (
    CatalogError,
    build_l10n_corpus,
    language_pairs,
    parse_nodes,
    placeholders,
    read_mo,
)


def write_mo(
    path: Path,
    messages: dict[str, str],
    *,
    plural_forms: str = "nplurals=2; plural=(n != 1);",
    team: str = "Testish (http://example.invalid/)",
    big_endian: bool = False,
) -> Path:
    """A GNU .mo file as msgfmt writes it (keys sorted, header first), made here without msgfmt.

    A key "ctx\\x04id" has a context, "one\\x00many" a plural; a value "a\\x00b" holds several plural forms."""
    header = f"Content-Type: text/plain; charset=UTF-8\nLanguage-Team: {team}\nPlural-Forms: {plural_forms}\n"
    entries = sorted({"": header, **messages}.items())
    order = ">" if big_endian else "<"
    ids = [k.encode() for k, _ in entries]
    strs = [v.encode() for _, v in entries]
    start = 28 + 16 * len(entries)
    blob, id_table, str_table = b"", [], []
    for table, items in ((id_table, ids), (str_table, strs)):
        for item in items:
            table.append((len(item), start + len(blob)))
            blob += item + b"\0"
    head = struct.pack(order + "7I", 0x950412DE, 0, len(entries), 28, 28 + 8 * len(entries), 0, 0)
    tables = b"".join(struct.pack(order + "2I", *e) for e in id_table + str_table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + tables + blob)
    return path


CATALOG = {
    "Save": "Simpan",
    "Delete %(name)s": "Hapus %(name)s",
    "Hello {0}": "Halo {0}",
    "Hello {name}": "Halo {nama}",  # the placeholder was translated: the software would break
    "%s items": "barang",  # the placeholder was lost
    "100%% done": "100%% selesai",  # %% is a literal percent, not a placeholder
    "one file\x00%(count)s files": "%(count)s berkas",  # one form (nplurals=1 below)
    "Month\x04May": "Mei",
    "Verb\x04May": "Boleh",  # "May" in two contexts with two translations: ambiguous without the context
    "Untranslated": "",
    "Close": "Tutup",
}


@pytest.fixture
def catalogs(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    write_mo(root / "locale/xx/LC_MESSAGES/django.mo", CATALOG, plural_forms="nplurals=1; plural=0;")
    # A second domain repeating a pair: a duplicate, kept once.
    write_mo(root / "sub/locale/xx/LC_MESSAGES/djangojs.mo", {"Close": "Tutup"}, plural_forms="nplurals=1; plural=0;")
    many = {f"Word {i}": f"Mot {i}" for i in range(20)}
    many["one apple\x00%(n)s apples"] = "%(n)s pomme\x00%(n)s pommes"
    write_mo(root / "locale/yy/LC_MESSAGES/django.mo", many, team="Yyish <y@example.invalid>", big_endian=True)
    write_mo(root / "locale/zz/LC_MESSAGES/django.mo", {f"Thing {i}": f"Ding {i}" for i in range(10)}, team="")
    return root


def test_placeholders_are_a_multiset_of_printf_and_format_fields():
    assert placeholders("%(name)s has %d of {0} and {name} and {} and {x:>3}") == Counter(
        {"%(name)s": 1, "%d": 1, "{0}": 1, "{name}": 1, "{}": 1, "{x}": 1}
    )
    assert placeholders("100%% {{literal}}") == Counter()
    assert placeholders("%s and %s") == Counter({"%s": 2})


def test_read_mo_keeps_contexts_and_plurals_in_either_byte_order(catalogs):
    little = read_mo(catalogs / "locale/xx/LC_MESSAGES/django.mo")
    by_id = {(e.context, e.msgid): e for e in little.entries}
    assert by_id[("Month", "May")].msgstrs == ("Mei",)
    assert by_id[("", "one file")].msgid_plural == "%(count)s files"
    assert little.headers["plural-forms"] == "nplurals=1; plural=0;"
    big = read_mo(catalogs / "locale/yy/LC_MESSAGES/django.mo")
    apples = next(e for e in big.entries if e.msgid == "one apple")
    assert apples.msgstrs == ("%(n)s pomme", "%(n)s pommes")
    assert big.singular_index() == 0


def test_a_file_that_is_not_a_catalog_is_named(tmp_path):
    bad = tmp_path / "bad.mo"
    bad.write_bytes(b"\x00" * 40)
    with pytest.raises(CatalogError, match="bad.mo: not a .mo catalog"):
        read_mo(bad)


def test_pairs_check_placeholders_take_the_singular_and_drop_ambiguity(catalogs):
    found = language_pairs(sorted(catalogs.glob("**/locale/xx/LC_MESSAGES/*.mo")), "xx")
    pairs = dict(found.pairs)
    assert pairs == {
        "Save": "Simpan",
        "Delete %(name)s": "Hapus %(name)s",
        "Hello {0}": "Halo {0}",
        "100%% done": "100%% selesai",
        "Close": "Tutup",
    }
    assert found.name == "Testish"
    # {name} -> {nama}, "%s items" -> no %s, and the plural's singular "one file" -> "%(count)s berkas".
    assert found.dropped["placeholders differ"] == 3
    assert found.dropped["ambiguous: several translations"] == 2
    assert found.dropped["untranslated"] == 1
    assert found.dropped["duplicate"] == 1
    assert found.dropped["plural form (its singular kept)"] == 1


def test_a_plural_entry_pairs_its_singular_with_the_form_for_one(tmp_path):
    # Russian-like: three forms, n = 1 -> index 0. msgstr[1] (the 2-4 form) is never used.
    rule = "nplurals=3; plural=(n%10==1 && n%100!=11 ? 0 : n%10>=2 && n%10<=4 && (n%100<10 || n%100>=20) ? 1 : 2);"
    path = write_mo(
        tmp_path / "ru.mo",
        {"%(n)s file\x00%(n)s files": "%(n)s fajl\x00%(n)s fajla\x00%(n)s fajlov"},
        plural_forms=rule,
    )
    assert dict(language_pairs([path], "ru").pairs) == {"%(n)s file": "%(n)s fajl"}
    # A formula that sends 1 elsewhere (made up) is followed.
    odd = write_mo(
        tmp_path / "odd.mo",
        {"%(n)s cat\x00%(n)s cats": "%(n)s A\x00%(n)s B"},
        plural_forms="nplurals=2; plural=(n == 1);",
    )
    assert dict(language_pairs([odd], "odd").pairs) == {"%(n)s cat": "%(n)s B"}


def test_corpus_gives_whole_languages_to_nodes_and_a_heldout_per_language(catalogs, tmp_path):
    out = tmp_path / "out"
    manifest = build_l10n_corpus(
        out, {"node-1": ("xx", "zz"), "node-2": ("yy",)}, roots=[catalogs], heldout_fraction=0.2
    )
    held = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert Counter(r["group"] for r in held) == manifest["heldout"]["groups"] == {"xx": 1, "yy": 4, "zz": 2}
    # Interleaved: the first records already cover every language.
    assert {r["group"] for r in held[:3]} == {"xx", "yy", "zz"}
    node1 = [json.loads(line) for line in (out / "node-1/train.jsonl").read_text().splitlines()]
    node2 = [json.loads(line) for line in (out / "node-2/train.jsonl").read_text().splitlines()]
    assert {r["group"] for r in node1} == {"xx", "zz"} and {r["group"] for r in node2} == {"yy"}
    train_keys = {(r["instruction"], r["output"]) for r in node1 + node2}
    assert not train_keys & {(r["instruction"], r["output"]) for r in held}
    assert node2[0]["instruction"].startswith("Translate to Yyish: ")
    assert any(r["instruction"] == "Translate to zz: Thing 0" for r in node1 + held)  # no team name: the code
    # The records load as instructions with their group, and the manifest's fingerprint is the loader's.
    records = load_records(out / "node-2")
    assert {r.group for r in records} == {"yy"} and records[0].kind == "instruction"
    assert manifest["nodes"]["node-2"]["fingerprint"] == fingerprint(records)


def test_corpus_is_deterministic_and_seeded(catalogs, tmp_path):
    nodes = {"node-1": ("xx",), "node-2": ("yy", "zz")}
    first = build_l10n_corpus(tmp_path / "a", nodes, roots=[catalogs])
    again = build_l10n_corpus(tmp_path / "b", nodes, roots=[catalogs])
    assert first["nodes"] == again["nodes"]
    for rel in ("heldout.jsonl", "node-1/train.jsonl", "node-2/train.jsonl"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    other = build_l10n_corpus(tmp_path / "c", nodes, roots=[catalogs], seed=1)
    assert other["heldout"]["fingerprint"] != first["heldout"]["fingerprint"]


def test_a_language_on_two_nodes_is_refused_unless_asked(catalogs, tmp_path):
    with pytest.raises(ValueError, match="yy: listed for more than one node"):
        build_l10n_corpus(tmp_path, {"node-1": ("yy",), "node-2": ("yy",)}, roots=[catalogs])
    manifest = build_l10n_corpus(tmp_path, {"node-1": ("yy",), "node-2": ("yy",)}, roots=[catalogs], split_shared=True)
    assert manifest["nodes"]["node-1"]["records"] + manifest["nodes"]["node-2"]["records"] == 18  # 20 pairs, 2 held out
    assert manifest["languages"]["yy"]["nodes"] == ["node-1", "node-2"]


def test_missing_language_and_bad_node_spec_are_clear(catalogs, tmp_path):
    with pytest.raises(ValueError, match="qq: no .mo catalogs under"):
        build_l10n_corpus(tmp_path, {"node-1": ("qq",)}, roots=[catalogs])
    with pytest.raises(ValueError, match="expected NODE=code"):
        parse_nodes("node-1")
    assert parse_nodes("sea=id, ms;af=sw") == {"sea": ("id", "ms"), "af": ("sw",)}


def test_cli_writes_the_corpus_and_reports_problems_without_a_traceback(catalogs, tmp_path, capsys):
    from federation.__main__ import main

    assert main(["l10n-corpus", "--out", str(tmp_path / "o"), "--catalogs", str(catalogs), "--nodes", "a=yy"]) == 0
    assert json.loads(capsys.readouterr().out)["heldout"] == {"yy": 2}
    assert main(["l10n-corpus", "--out", str(tmp_path / "o"), "--catalogs", str(catalogs), "--nodes", "a=qq"]) == 2
    assert "l10n-corpus: qq: no .mo catalogs" in capsys.readouterr().err
