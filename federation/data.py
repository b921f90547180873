"""Contributor data: load, validate, fingerprint, split and tokenize.

This runs on the contributor's own machine and the data never leaves it; only the
fingerprint and counts are reported. Mistakes in the data are the contributor's to fix,
so every problem is collected with a file and line and reported at once, never as a
traceback.

Accepted input, one record per line in `.jsonl`:
    {"text": "..."}
    {"instruction": "...", "input": "... (optional)", "output": "..."}     (Alpaca)
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
and `.txt`, where each blank-line-separated paragraph is one text record. Any JSON record may carry a
`"group"` (a language code, a topic: letters, digits and `_.@+-`, at most 64): the server reports its held-out
metrics per group; on a node it is only part of the fingerprint.
 `.txt`, where each blank-line-separated paragraph is one text record.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# A line longer than this is almost certainly not training text (a minified blob, an
# embedded file); refusing it early beats a silent multi-hour tokenization.
MAX_LINE_CHARS = 100_000
MAX_REPORTED_PROBLEMS = 20
IGNORE_INDEX = -100  # label value PyTorch's cross-entropy skips
SUFFIXES = (".jsonl", ".txt")
ROLES = ("system", "user", "assistant")
# A record's group label: it becomes a metric name on the site and in the model card's YAML, hence plain ASCII.
GROUP_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}")

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass(frozen=True)
class Record:
    kind: str  # "text" | "instruction" | "chat"
    text: str = ""
    prompt: str = ""
    response: str = ""
    messages: tuple[tuple[str, str], ...] = ()  # (role, content) pairs
    source: str = ""  # "file.jsonl:12"; for error messages only, not part of the fingerprint
    group: str = ""  # "group" of a JSON record (e.g. a language code): held-out metrics are reported per group


@dataclass(frozen=True)
class Problem:
    path: str
    line: int  # 0 when the problem concerns the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}"


class DataError(Exception):
    """Everything wrong with the contributor's data, reported together."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        shown = [str(p) for p in self.problems[:MAX_REPORTED_PROBLEMS]]
        hidden = len(self.problems) - len(shown)
        if hidden > 0:
            shown.append(f"... and {hidden} more")
        return "\n".join(shown)

    def __str__(self) -> str:
        return self._render()


# --------------------------------------------------------------------------- loading


def _find_files(root: Path, problems: list[Problem]) -> list[Path]:
    if not root.exists():
        problems.append(Problem(str(root), 0, "file not found"))
        return []
    if root.is_dir():
        # Hidden entries are skipped: .git internals, editor backups and macOS "._x.txt"
        # resource forks (binary) are never the contributor's data.
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file()
            and p.suffix.lower() in SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if not files:
            problems.append(Problem(str(root), 0, "no .jsonl or .txt files in this folder"))
        return files
    if root.suffix.lower() not in SUFFIXES:
        problems.append(Problem(str(root), 0, f"unsupported file type {root.suffix or '(none)'!r}; use .jsonl or .txt"))
        return []
    return [root]


def _decode_lines(path: Path, problems: list[Problem]) -> list[str] | None:
    """The file's lines as text, or None (with a problem recorded) if it is not text."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problems.append(Problem(str(path), 0, f"cannot read file: {exc.strerror or exc}"))
        return None
    if raw.startswith(b"\xef\xbb\xbf"):  # editors on Windows like to add a BOM
        raw = raw[3:]
    lines = []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        if b"\x00" in chunk:
            problems.append(Problem(str(path), number, "binary content (NUL byte); expected a text file"))
            return None
        try:
            lines.append(chunk.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError:
            problems.append(Problem(str(path), number, "binary content (not valid UTF-8); expected a text file"))
            return None
    return lines


class _Spot:
    """Where a record came from plus the list to report into, so checkers stay short."""

    def __init__(self, path: Path, line: int, problems: list[Problem]) -> None:
        self.path, self.line, self.problems = str(path), line, problems
        self.count = 0

    def report(self, message: str) -> None:
        self.problems.append(Problem(self.path, self.line, message))
        self.count += 1


def _check_str(obj: dict, key: str, required: bool, spot: _Spot) -> str | None:
    """obj[key] as a string, or None after reporting what is wrong with it."""
    value = obj.get(key)
    if value is None:
        if required:
            spot.report(f"missing field {key!r}")
            return None
        return ""
    if not isinstance(value, str):
        spot.report(f"field {key!r} must be a string, got {type(value).__name__}")
        return None
    if required and not value.strip():
        spot.report(f"field {key!r} is empty")
        return None
    return value


def _parse_text(obj: dict, spot: _Spot, source: str) -> Record | None:
    text = _check_str(obj, "text", True, spot)
    return None if text is None else Record(kind="text", text=text, source=source)


def _parse_instruction(obj: dict, spot: _Spot, source: str) -> Record | None:
    instruction = _check_str(obj, "instruction", True, spot)
    extra = _check_str(obj, "input", False, spot)
    output = _check_str(obj, "output", True, spot)
    if spot.count or instruction is None or extra is None or output is None:
        return None
    if extra.strip():
        prompt = ALPACA_WITH_INPUT.format(instruction=instruction, input=extra)
    else:
        prompt = ALPACA_NO_INPUT.format(instruction=instruction)
    return Record(kind="instruction", prompt=prompt, response=output, source=source)


def _parse_chat(obj: dict, spot: _Spot, source: str) -> Record | None:
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        spot.report("field 'messages' must be a non-empty list")
        return None
    pairs: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        name = f"messages[{i}]"
        if not isinstance(message, dict):
            spot.report(f"{name} must be an object with 'role' and 'content'")
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            spot.report(f"{name}.role must be one of {', '.join(ROLES)}, got {role!r}")
            continue
        if not isinstance(content, str):
            got = "nothing" if content is None else type(content).__name__
            spot.report(f"{name}.content must be a string, got {got}")
            continue
        if role != "system" and not content.strip():
            spot.report(f"{name}.content is empty")
            continue
        pairs.append((role, content))
    if spot.count:
        return None
    if not any(role == "assistant" for role, _ in pairs):
        spot.report("field 'messages' has no assistant message (nothing to learn from)")
        return None
    if pairs[-1][0] != "assistant":
        spot.report("field 'messages' must end with an assistant message")
        return None
    return Record(kind="chat", messages=tuple(pairs), source=source)


def _parse_object(obj: Any, spot: _Spot, source: str) -> Record | None:
    if not isinstance(obj, dict):
        spot.report(f"expected a JSON object, got {type(obj).__name__}")
        return None
    # The most specific shape wins, so extra keys such as "text" beside "messages" are
    # tolerated rather than ambiguous.
    group = obj.get("group", "")
    if not (isinstance(group, str) and (group == "" or GROUP_PATTERN.fullmatch(group))):
        spot.report(
            f"field 'group' must be up to 64 letters, digits or _.@+- (e.g. a language code), not {group!r:.80}"
        )
        return None
    record = None
    if "messages" in obj:
        record = _parse_chat(obj, spot, source)
    elif "instruction" in obj or "output" in obj:
        record = _parse_instruction(obj, spot, source)
    elif "text" in obj:
        record = _parse_text(obj, spot, source)
    else:
        keys = ", ".join(sorted(map(str, obj))) or "none"
        spot.report(
            f"unknown record shape: expected 'text', 'instruction'+'output', or 'messages' (got fields: {keys})"
        )
    return replace(record, group=group) if record is not None and group else record


def _load_jsonl(path: Path, lines: list[str], label: str, problems: list[Problem]) -> list[Record]:
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        spot = _Spot(path, number, problems)
        if len(line) > MAX_LINE_CHARS:
            spot.report(f"line is {len(line):,} characters, over the limit of {MAX_LINE_CHARS:,}")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            spot.report(f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        record = _parse_object(obj, spot, f"{label}:{number}")
        if record is not None:
            records.append(record)
    return records


def _load_txt(path: Path, lines: list[str], label: str, problems: list[Problem]) -> list[Record]:
    records = []
    paragraph: list[str] = []
    start = 0
    for number, line in enumerate([*lines, ""], start=1):  # trailing "" flushes the last one
        if len(line) > MAX_LINE_CHARS:
            problems.append(
                Problem(str(path), number, f"line is {len(line):,} characters, over the limit of {MAX_LINE_CHARS:,}")
            )
            paragraph = []
            continue
        if line.strip():
            if not paragraph:
                start = number
            paragraph.append(line)
        elif paragraph:
            text = "\n".join(paragraph).strip()
            records.append(Record(kind="text", text=text, source=f"{label}:{start}"))
            paragraph = []
    return records


def load_records(path: str | Path) -> list[Record]:
    """Every record under `path` (a file, or a folder searched recursively).

    Raises DataError listing all problems in all files; returns nothing partial.
    """
    root = Path(path)
    problems: list[Problem] = []
    records: list[Record] = []
    for file in _find_files(root, problems):
        label = file.relative_to(root).as_posix() if root.is_dir() else file.name
        lines = _decode_lines(file, problems)
        if lines is None:
            continue
        before = len(problems)
        if file.suffix.lower() == ".jsonl":
            found = _load_jsonl(file, lines, label, problems)
        else:
            found = _load_txt(file, lines, label, problems)
        # "Empty" only when nothing else explains it, so one bad line is not reported twice.
        if not found and len(problems) == before:
            problems.append(Problem(str(file), 0, "empty file: no records"))
        records.extend(found)
    if not records and not problems:
        problems.append(Problem(str(root), 0, "no records found"))
    if problems:
        raise DataError(problems)
    return records


# ---------------------------------------------------------------- fingerprint, split


def _norm(text: str) -> str:
    return text.replace("\r\n", "\n").strip()


def _canonical(record: Record) -> str:
    body: dict[str, Any] = {"kind": record.kind}
    if record.kind == "chat":
        body["messages"] = [[role, _norm(content)] for role, content in record.messages]
    elif record.kind == "instruction":
        body["prompt"] = _norm(record.prompt)
        body["response"] = _norm(record.response)
    else:
        body["text"] = _norm(record.text)
    if record.group:  # only when set: data without groups keeps the fingerprint it always had
        body["group"] = record.group
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def fingerprint(records: list[Record]) -> str:
    """sha256 of the data's content, independent of file names and record order.

    Sorting the canonical lines means reorganizing files does not change it, while any
    edit to any record does; contributors can prove "same data as last round".
    """
    digest = hashlib.sha256(b"bayanihan-data-v1\n")
    for line in sorted(_canonical(r) for r in records):
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def split_records(records: list[Record], val_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Seeded shuffle into (train, validation).

    With two or more records both sides get at least one; val_fraction == 0 asks for
    no validation set at all.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    shuffled = [records[i] for i in order]
    n = len(shuffled)
    if n < 2 or val_fraction == 0:
        return shuffled, []
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    return shuffled[n_val:], shuffled[:n_val]


# ---------------------------------------------------------------------- tokenizing


def _ids(tokenizer: Any, text: str, special: bool = False) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=special))


def _eos(tokenizer: Any) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return [eos] if isinstance(eos, int) else []


def _render_fallback(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> str:
    """A plain "<|role|>" format for tokenizers that ship no chat template."""
    eos = getattr(tokenizer, "eos_token", None) or ""
    parts = []
    for m in messages:
        end = eos if m["role"] == "assistant" else ""
        parts.append(f"<|{m['role']}|>\n{m['content']}{end}\n")
    if add_generation_prompt:
        parts.append("<|assistant|>\n")
    return "".join(parts)


def _render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return _render_fallback(tokenizer, messages, add_generation_prompt)


def _encode_chat(tokenizer: Any, record: Record) -> tuple[list[int], list[int]]:
    """Tokens of the whole conversation, trainable only on the assistant turns.

    Incremental method: for each assistant turn, the conversation rendered up to it with
    the generation prompt is what the model is shown; rendering it including the turn
    adds exactly what the model should learn to produce (content and end tokens).
    """
    messages = [{"role": role, "content": content} for role, content in record.messages]
    ids: list[int] = []
    labels: list[int] = []
    for i, (role, _) in enumerate(record.messages):
        if role != "assistant":
            continue
        shown = _render(tokenizer, messages[:i], add_generation_prompt=True)
        full = _render(tokenizer, messages[: i + 1])
        shown_ids, full_ids = _ids(tokenizer, shown), _ids(tokenizer, full)
        if full_ids[: len(shown_ids)] == shown_ids and shown_ids[: len(ids)] == ids:
            new_prompt, new_answer = shown_ids[len(ids) :], full_ids[len(shown_ids) :]
        else:
            # Tokens merged across a boundary: fall back to tokenizing the text pieces on
            # their own, which always lines up (at the cost of a slightly odd split).
            done = tokenizer.decode(ids) if ids else ""
            if not (full.startswith(shown) and shown.startswith(done)):
                raise ValueError(f"{record.source}: chat template does not render prefixes consistently")
            new_prompt = _ids(tokenizer, shown[len(done) :])
            new_answer = _ids(tokenizer, full[len(shown) :])
        ids += new_prompt + new_answer
        labels += [IGNORE_INDEX] * len(new_prompt) + new_answer
    return ids, labels


def encode_record(tokenizer: Any, record: Record, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels), truncated to max_length.

    Text trains on every token; instruction and chat data only on the answer, since the
    point is to teach responses, not to imitate the prompts. If truncation leaves no
    trainable token the labels are all IGNORE_INDEX and the caller should drop it.
    """
    if record.kind == "text":
        ids = _ids(tokenizer, record.text, special=True) + _eos(tokenizer)
        labels = list(ids)
    elif record.kind == "instruction":
        prompt = _ids(tokenizer, record.prompt, special=True)
        answer = _ids(tokenizer, record.response) + _eos(tokenizer)
        ids = prompt + answer
        labels = [IGNORE_INDEX] * len(prompt) + answer
    elif record.kind == "chat":
        ids, labels = _encode_chat(tokenizer, record)
    else:
        raise ValueError(f"unknown record kind {record.kind!r}")
    return ids[:max_length], labels[:max_length]


# --------------------------------------------------------------------------- stats


@dataclass
class DataStats:
    records: int
    kinds: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""
    characters: int = 0
    tokens: int | None = None  # after truncation to max_length
    truncated: int | None = None  # records longer than max_length
    untrainable: int | None = None  # records left with no trainable token (dropped in training)


def _characters(record: Record) -> int:
    return (
        len(record.text)
        + len(record.prompt)
        + len(record.response)
        + sum(len(content) for _, content in record.messages)
    )


def describe(records: list[Record], tokenizer: Any = None, max_length: int = 512) -> DataStats:
    """Counts a contributor can share without sharing the data."""
    stats = DataStats(
        records=len(records),
        kinds=dict(sorted(Counter(r.kind for r in records).items())),
        fingerprint=fingerprint(records),
        characters=sum(_characters(r) for r in records),
    )
    if tokenizer is not None:
        stats.tokens = stats.truncated = stats.untrainable = 0
        for record in records:
            ids, labels = encode_record(tokenizer, record, max_length=10**9)
            stats.truncated += len(ids) > max_length
            stats.tokens += min(len(ids), max_length)
            stats.untrainable += all(x == IGNORE_INDEX for x in labels[:max_length])
    return stats
