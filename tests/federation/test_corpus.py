from __future__ import annotations

import json

import pytest

from federation.corpus import MAX_CHARS, build_demo_corpus, chunk_text, topic_group


def _texts(path):
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return out, build_demo_corpus(out, n_contributors=3, seed=0)


def test_groups_disjoint_and_all_dealt(corpus):
    _, manifest = corpus
    groups = [g for node in manifest["nodes"].values() for g in node["groups"]]
    assert len(groups) == len(set(groups))
    assert set(groups) == set(manifest["groups"])
    assert list(manifest["nodes"]) == ["node-1", "node-2", "node-3"]


def test_heldout_covers_every_group_and_never_overlaps(corpus):
    out, manifest = corpus
    assert all(n >= 1 for n in manifest["heldout"]["groups"].values())
    assert set(manifest["heldout"]["groups"]) == set(manifest["groups"])
    heldout = set(_texts(out / "heldout.jsonl"))
    seen: set[str] = set()
    for node, info in manifest["nodes"].items():
        texts = _texts(out / node / "train.jsonl")
        assert len(texts) == info["chunks"] > 0
        assert not heldout & set(texts)
        assert not seen & set(texts)  # no chunk on two nodes
        seen |= set(texts)


def test_deterministic_bytes(corpus, tmp_path):
    out, manifest = corpus
    again = build_demo_corpus(tmp_path, n_contributors=3, seed=0)
    assert again == manifest
    for rel in ["manifest.json", "heldout.jsonl", *(f"{n}/train.jsonl" for n in manifest["nodes"])]:
        assert (tmp_path / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_caps_and_more_nodes_than_groups(tmp_path):
    manifest = build_demo_corpus(tmp_path, n_contributors=8, max_chunks_per_node=5, max_heldout=12)
    assert len(manifest["nodes"]) == 8
    assert all(node["chunks"] == 5 for node in manifest["nodes"].values())
    assert manifest["heldout"]["chunks"] == 12
    assert all(n >= 1 for n in manifest["heldout"]["groups"].values())
    groups = [g for node in manifest["nodes"].values() for g in node["groups"]]
    assert len(groups) == len(set(groups))
    # Fewer contributors on a rerun: the extra node folders go away.
    build_demo_corpus(tmp_path, n_contributors=2, max_chunks_per_node=5, max_heldout=12)
    assert not (tmp_path / "node-3").exists()


def test_chunking_is_paragraph_aligned():
    paragraphs = [f"Paragraph {i}. " + "word " * 40 for i in range(30)]
    chunks = chunk_text("\n\n".join(paragraphs))
    assert "\n\n".join(chunks) == "\n\n".join(p.strip("\n") for p in paragraphs)
    assert all(len(c) <= MAX_CHARS for c in chunks)
    assert all(c.startswith("Paragraph") for c in chunks)


def test_topic_rule():
    assert topic_group("typesseq") == topic_group("specialnames") == "datamodel"
    assert topic_group("assert") == topic_group("calls") == "language"
