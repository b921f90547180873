from __future__ import annotations

import json

import pytest

from federation import data
from federation.data import (
    IGNORE_INDEX,
    DataError,
    Problem,
    Record,
    describe,
    encode_record,
    fingerprint,
    load_records,
    split_records,
)


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return path


def problems_of(path) -> str:
    with pytest.raises(DataError) as err:
        load_records(path)
    return str(err.value)


# ------------------------------------------------------------------ formats load


def test_text_records(tmp_path):
    [r] = load_records(write(tmp_path / "a.jsonl", [{"text": "hello"}]))
    assert (r.kind, r.text, r.source) == ("text", "hello", "a.jsonl:1")


def test_alpaca_records(tmp_path):
    path = write(
        tmp_path / "a.jsonl",
        [
            {"instruction": "Add.", "input": "2 and 2", "output": "4"},
            {"instruction": "Greet.", "output": "Hi"},
            {"instruction": "Greet.", "input": "", "output": "Hi"},
        ],
    )
    with_input, plain, empty_input = load_records(path)
    assert with_input.kind == "instruction" and with_input.response == "4"
    assert with_input.prompt.startswith("Below is an instruction that describes a task")
    assert "### Instruction:\nAdd.\n\n### Input:\n2 and 2\n\n### Response:\n" in with_input.prompt
    assert "### Input" not in plain.prompt and plain.prompt.endswith("### Instruction:\nGreet.\n\n### Response:\n")
    assert empty_input.prompt == plain.prompt


def test_chat_records(tmp_path):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    [r] = load_records(write(tmp_path / "c.jsonl", ["", {"messages": msgs}]))
    assert r.kind == "chat" and r.source == "c.jsonl:2"  # blank line skipped, numbering kept
    assert r.messages == (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."))


def test_txt_paragraphs_and_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("First para\nstill first.\n\n\n  \nSecond para.\n")
    write(tmp_path / "a.jsonl", [{"text": "json one"}])
    (tmp_path / "ignored.csv").write_text("x,y\n")
    records = load_records(tmp_path)
    assert [r.source for r in records] == ["a.jsonl:1", "sub/notes.txt:1", "sub/notes.txt:6"]
    assert records[1].text == "First para\nstill first."


def test_crlf_and_bom(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n{"text": "b"}\r\n')
    assert [r.text for r in load_records(path)] == ["a", "b"]


# ------------------------------------------------------------------ bad input


def test_bad_json_names_file_and_line(tmp_path):
    msg = problems_of(write(tmp_path / "x.jsonl", [{"text": "a"}, {"text": "b"}, '{"text": oops}']))
    assert "x.jsonl:3: invalid JSON" in msg


def test_not_an_object(tmp_path):
    assert "x.jsonl:1: expected a JSON object, got list" in problems_of(write(tmp_path / "x.jsonl", ["[1, 2]"]))


def test_missing_and_wrong_fields_are_named(tmp_path):
    msg = problems_of(
        write(
            tmp_path / "x.jsonl",
            [
                {"instruction": "Do it."},
                {"text": 5},
                {"text": "   "},
                {"instruction": "Do", "input": 3, "output": "ok"},
                {"foo": "bar"},
            ],
        )
    )
    assert "x.jsonl:1: missing field 'output'" in msg
    assert "x.jsonl:2: field 'text' must be a string, got int" in msg
    assert "x.jsonl:3: field 'text' is empty" in msg
    assert "x.jsonl:4: field 'input' must be a string" in msg
    assert "x.jsonl:5: unknown record shape" in msg and "foo" in msg


def test_chat_problems(tmp_path):
    msg = problems_of(
        write(
            tmp_path / "c.jsonl",
            [
                {"messages": [{"role": "user", "content": "Hi"}]},
                {
                    "messages": [
                        {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Yo"},
                        {"role": "user", "content": "And?"},
                    ]
                },
                {"messages": [{"role": "robot", "content": "Hi"}, {"role": "assistant", "content": "x"}]},
                {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
                {"messages": []},
            ],
        )
    )
    assert "c.jsonl:1: field 'messages' has no assistant message" in msg
    assert "c.jsonl:2: field 'messages' must end with an assistant message" in msg
    assert "c.jsonl:3: messages[0].role must be one of" in msg
    assert "c.jsonl:4: messages[0].content must be a string" in msg
    assert "c.jsonl:5: field 'messages' must be a non-empty list" in msg


def test_binary_file(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_bytes(b'{"text": "fine"}\n\x89PNG\x00\x01\n')
    assert "b.jsonl:2: binary content (NUL byte)" in problems_of(path)
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    assert "b.jsonl:2: binary content (not valid UTF-8)" in problems_of(path)


def test_empty_file_and_missing_path(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    assert "e.jsonl: empty file: no records" in problems_of(tmp_path / "e.jsonl")
    assert "nope.jsonl: file not found" in problems_of(tmp_path / "nope.jsonl")
    (tmp_path / "d").mkdir()
    assert "no .jsonl or .txt files" in problems_of(tmp_path / "d")


def test_wrong_extension_given_directly(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    assert "data.csv: unsupported file type '.csv'" in problems_of(tmp_path / "data.csv")


def test_absurd_line(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_LINE_CHARS", 50)
    msg = problems_of(write(tmp_path / "x.jsonl", [{"text": "ok"}, {"text": "y" * 60}]))
    assert "x.jsonl:2: line is" in msg and "over the limit of 50" in msg


def test_problems_from_all_files_reported_once_and_capped(tmp_path):
    write(tmp_path / "a.jsonl", ["nope"] * 15)
    write(tmp_path / "b.jsonl", ["nope"] * 15)
    with pytest.raises(DataError) as err:
        load_records(tmp_path)
    assert len(err.value.problems) == 30
    lines = str(err.value).splitlines()
    assert len(lines) == 21 and lines[-1] == "... and 10 more"
    assert lines[0].endswith("a.jsonl:1: invalid JSON: Expecting value (column 1)")
    assert str(Problem("f.txt", 0, "m")) == "f.txt: m"


# ------------------------------------------------------------ fingerprint, split


def test_fingerprint_ignores_file_layout_and_order(tmp_path):
    write(tmp_path / "one" / "a.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    write(tmp_path / "one" / "b.jsonl", [{"instruction": "I", "output": "O"}])
    write(tmp_path / "two" / "z.jsonl", [{"instruction": "I", "output": "O"}, {"text": "beta"}])
    write(tmp_path / "two" / "y" / "q.jsonl", [{"text": "alpha\r\n"}])
    first = fingerprint(load_records(tmp_path / "one"))
    assert first == fingerprint(load_records(tmp_path / "two"))
    write(tmp_path / "two" / "y" / "q.jsonl", [{"text": "alpha!"}])
    assert fingerprint(load_records(tmp_path / "two")) != first


def test_split_is_deterministic_and_never_empty():
    records = [Record(kind="text", text=str(i)) for i in range(50)]
    train, val = split_records(records, 0.1, seed=7)
    assert (train, val) == split_records(records, 0.1, seed=7)
    assert (len(train), len(val)) == (45, 5)
    assert sorted(r.text for r in train + val) == sorted(r.text for r in records)
    assert split_records(records, 0.1, seed=8) != (train, val)
    two = records[:2]
    assert [len(x) for x in split_records(two, 0.01, 0)] == [1, 1]
    assert [len(x) for x in split_records(two, 0.9, 0)] == [1, 1]
    assert [len(x) for x in split_records(records[:1], 0.5, 0)] == [1, 0]


# ---------------------------------------------------------------------- encoding


def test_encode_text_trains_on_everything(tiny_tokenizer):
    ids, labels = encode_record(tiny_tokenizer, Record(kind="text", text="import os"), 64)
    assert ids == labels and ids[-1] == tiny_tokenizer.eos_token_id


def test_encode_instruction_masks_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    record = Record(kind="instruction", prompt="### Instruction:\nAdd 2 and 2\n\n### Response:\n", response="4")
    ids, labels = encode_record(tok, record, 128)
    n_prompt = len(tok.encode(record.prompt))
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] == tok.encode("4") + [tok.eos_token_id]


def _trainable_spans(tok, ids, labels) -> list[str]:
    spans, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tok.decode(current))
            current = []
    if current:
        spans.append(tok.decode(current))
    return spans


def test_encode_chat_trains_only_on_assistant(tiny_tokenizer):
    tok = tiny_tokenizer
    messages = (("user", "What is 2+2?"), ("assistant", "Four."), ("user", "And 3+3?"), ("assistant", "Six."))
    ids, labels = encode_record(tok, Record(kind="chat", messages=messages), 256)
    full = tok.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False)
    assert ids == tok.encode(full, add_special_tokens=False)
    assert _trainable_spans(tok, ids, labels) == ["Four.<|im_end|>\n", "Six.<|im_end|>\n"]


def test_encode_chat_without_template_falls_back(tiny_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    tok.chat_template = None
    record = Record(kind="chat", messages=(("user", "hi"), ("assistant", "yo")))
    ids, labels = encode_record(tok, record, 64)
    assert tok.decode(ids) == "<|user|>\nhi\n<|assistant|>\nyo<|im_end|>\n"
    assert _trainable_spans(tok, ids, labels) == ["yo<|im_end|>\n"]


def test_truncation_can_leave_nothing_to_learn(tiny_tokenizer):
    record = Record(kind="instruction", prompt="word " * 50, response="answer")
    ids, labels = encode_record(tiny_tokenizer, record, 8)
    assert len(ids) == len(labels) == 8
    assert all(label == IGNORE_INDEX for label in labels)


def test_describe(tiny_tokenizer):
    records = [Record(kind="text", text="abc " * 100), Record(kind="instruction", prompt="p " * 100, response="r")]
    stats = describe(records, tiny_tokenizer, max_length=16)
    assert stats.records == 2 and stats.kinds == {"instruction": 1, "text": 1}
    assert stats.fingerprint == fingerprint(records)
    assert stats.tokens == 32 and stats.truncated == 2 and stats.untrainable == 1
    assert describe(records).tokens is None


def test_hidden_files_in_a_directory_are_skipped(tmp_path):
    write(tmp_path / "a.jsonl", [{"text": "kept"}])
    (tmp_path / "._a.jsonl").write_bytes(b"\x00\x05\x16\x07 resource fork")
    write(tmp_path / ".cache" / "b.jsonl", [{"text": "hidden"}])
    assert [r.text for r in load_records(tmp_path)] == ["kept"]


def test_a_group_label_is_kept_checked_and_fingerprinted_only_when_set(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"instruction": "Translate to Malay: Save", "output": "Simpan", "group": "ms"}\n{"text": "plain"}\n'
    )
    grouped, plain = load_records(path)
    assert grouped.group == "ms" and plain.group == ""
    # Without a group a record fingerprints as it always did; with one, the group is part of the content.
    assert fingerprint([plain]) == fingerprint([Record(kind="text", text="plain")])
    assert fingerprint([grouped]) != fingerprint([Record(kind="instruction", prompt=grouped.prompt, response="Simpan")])
    path.write_text('{"text": "x", "group": "no spaces please"}\n{"text": "y", "group": 3}\n')
    with pytest.raises(DataError) as err:
        load_records(path)
    assert [p.line for p in err.value.problems] == [1, 2]
    assert "field 'group' must be" in str(err.value)
