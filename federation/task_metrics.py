"""The server's held-out evaluation beyond one loss: per-group loss and generation metrics (chrF, exact match).

A campaign names its metrics in EvaluationConfig. Each round (and for the base model at round 0) the ServerApp
greedily generates an answer for a bounded sample of its held-out instruction/chat records and scores it against
the record's own answer with a standard implementation: chrF is sacrebleu's (character n-gram F-score, 0-100,
the WMT metric that suits morphologically rich languages and short strings), exact match the % of records whose
answer is reproduced exactly (whitespace-trimmed). Records with a group label (a language) are also scored per
group, and the held-out loss is reported per group beside the overall one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from sacrebleu.metrics import CHRF

from federation import events
from federation.data import Record, _render
from federation.task import Example, _check_stop, encode_all, evaluate

# The instruction format's section marker (federation.data's Alpaca prompts): a model that goes on to write the
# next "### Instruction" has finished its answer.
SECTION_MARK = "\n###"
# Prompts longer than this are skipped: it bounds the generation's memory (batches of 8) with the new-token bound.
MAX_PROMPT_TOKENS = 1024


@dataclass(frozen=True)
class Target:
    """One record to generate for: its prompt's token ids, the answer it should produce and its group."""

    prompt_ids: list[int]
    reference: str
    group: str = ""


def round_robin(records: Sequence[Record], limit: int) -> list[Record]:
    """At most `limit` records, taken in file order from each group in turn, so every group is represented."""
    queues: OrderedDict[str, list[Record]] = OrderedDict()
    for record in records:
        queues.setdefault(record.group, []).append(record)
    picked: list[Record] = []
    while len(picked) < limit and any(queues.values()):
        for queue in queues.values():
            if queue and len(picked) < limit:
                picked.append(queue.pop(0))
    return picked


def generation_targets(
    tokenizer, records: Sequence[Record], limit: int, max_prompt_tokens: int = MAX_PROMPT_TOKENS
) -> list[Target]:
    """Prompts and references of up to `limit` instruction/chat records (text records have no answer to score).

    A prompt longer than `max_prompt_tokens` is skipped, not cut: a cut prompt asks something else."""
    answerable = [r for r in records if r.kind in ("instruction", "chat")]
    targets = []
    for record in round_robin(answerable, len(answerable)):
        if len(targets) >= limit:
            break
        if record.kind == "instruction":
            prompt_ids = list(tokenizer.encode(record.prompt, add_special_tokens=True))
            reference = record.response
        else:
            messages = [{"role": role, "content": content} for role, content in record.messages]
            prompt = _render(tokenizer, messages[:-1], add_generation_prompt=True)
            prompt_ids = list(tokenizer.encode(prompt, add_special_tokens=False))
            reference = record.messages[-1][1]
        if 0 < len(prompt_ids) <= max_prompt_tokens:
            targets.append(Target(prompt_ids, reference.strip(), record.group))
    return targets


@torch.no_grad()
def generate(model, tokenizer, targets: Sequence[Target], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy answers, at most `max_new_tokens` tokens each, for batches of left-padded prompts."""
    model.eval()
    pad = int(tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    answers: list[str] = []
    for start in range(0, len(targets), batch_size):
        _check_stop()
        batch = targets[start : start + batch_size]
        width = max(len(t.prompt_ids) for t in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, target in enumerate(batch):
            ids[row, width - len(target.prompt_ids) :] = torch.tensor(target.prompt_ids)
            mask[row, width - len(target.prompt_ids) :] = 1
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=eos,
            use_cache=True,  # the training model switches the cache off; generation needs it to stay cheap
            # A model that goes on to the prompt format's next section has answered: stop it there rather than
            # spend the rest of the token bound (the answer is cut at the mark below either way).
            stop_strings=[SECTION_MARK],
            tokenizer=tokenizer,
        )
        for row in range(len(batch)):
            text = tokenizer.decode(out[row, width:], skip_special_tokens=True)
            answers.append(text.split(SECTION_MARK, 1)[0].strip())
    return answers


def score(metric: str, hypotheses: Sequence[str], references: Sequence[str]) -> float | None:
    """One metric over a set of records (None for no records)."""
    if not hypotheses:
        return None
    if metric == events.CHRF:
        return float(CHRF().corpus_score(list(hypotheses), [list(references)]).score)
    if metric == events.EXACT_MATCH:
        return (
            100.0 * sum(h.strip() == r.strip() for h, r in zip(hypotheses, references, strict=True)) / len(hypotheses)
        )
    raise ValueError(f"unknown task metric {metric!r}")


def group_examples(tokenizer, records: Sequence[Record], seq_len: int) -> dict[str, list[Example]]:
    """Held-out examples by group ("" for records without one), in order of first appearance."""
    grouped: OrderedDict[str, list[Record]] = OrderedDict()
    for record in records:
        grouped.setdefault(record.group, []).append(record)
    return {group: encode_all(tokenizer, items, seq_len) for group, items in grouped.items()}


def heldout_scores(
    model,
    tokenizer,
    examples: dict[str, list[Example]],
    targets: Sequence[Target],
    metrics: Sequence[str],
    max_new_tokens: int,
) -> tuple[float, int, events.HeldoutScores]:
    """(overall loss, its tokens, the rest): per-group loss always when records carry groups; the metrics only
    when the campaign names some. The overall loss is the token-weighted mean of the groups', as one pass over
    every example would give."""
    pad = int(tokenizer.pad_token_id)
    total, tokens = 0.0, 0
    scores = events.HeldoutScores()
    for group, items in examples.items():
        loss, count = evaluate(model, items, pad)
        if count:
            total += loss * count
            tokens += count
        if group:
            scores.groups[group] = {
                events.GROUP_LOSS: loss if count else None,
                events.GROUP_TOKENS: count,
            }
    if metrics and targets:
        answers = generate(model, tokenizer, targets, max_new_tokens)
        references = [t.reference for t in targets]
        scores.records = len(targets)
        scores.metrics = {m: score(m, answers, references) for m in metrics}
        for group in dict.fromkeys(t.group for t in targets if t.group):
            mine = [i for i, t in enumerate(targets) if t.group == group]
            row = scores.groups.setdefault(group, {})
            row[events.GROUP_RECORDS] = len(mine)
            for m in metrics:
                row[m] = score(m, [answers[i] for i in mine], [references[i] for i in mine])
    return (total / tokens if tokens else float("nan")), tokens, scores
