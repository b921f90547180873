"""Generation metrics on the server's held-out set: greedy, bounded, scored by sacrebleu, per group."""

from __future__ import annotations

import pytest
import torch
from sacrebleu.metrics import CHRF

from federation import events
from federation.config import TrainConfig
from federation.data import Record
from federation.task import encode_all, evaluate, load_tokenizer, lora_model, train
from federation.task_metrics import (
    generate,
    generation_targets,
    group_examples,
    heldout_scores,
    round_robin,
    score,
)

CFG = TrainConfig(lora_r=8, lora_alpha=16, lora_dropout=0.0, local_steps=60, lr=0.02, seq_len=96, batch_size=4)


def pairs(group: str, n: int) -> list[Record]:
    from federation.data import ALPACA_NO_INPUT

    return [
        Record(
            kind="instruction",
            prompt=ALPACA_NO_INPUT.format(instruction=f"Translate to {group}: word {i}"),
            response=f"{group}-{i} ok",
            group=group,
        )
        for i in range(n)
    ]


def test_scores_are_sacrebleus_chrf_and_exact_match_in_percent():
    hyps, refs = ["Simpan berkas", "Hapus", "x"], ["Simpan berkas", "Hapus semua", "Tutup"]
    assert score(events.CHRF, hyps, refs) == CHRF().corpus_score(hyps, [refs]).score
    assert score(events.CHRF, refs, refs) == 100.0
    assert score(events.EXACT_MATCH, hyps, refs) == pytest.approx(100 / 3)
    assert score(events.EXACT_MATCH, [], []) is None
    with pytest.raises(ValueError, match="unknown task metric 'bleu'"):
        score("bleu", hyps, refs)


def test_the_sample_takes_every_group_in_turn_and_skips_text_and_overlong_prompts(tiny_tokenizer):
    records = [*pairs("aa", 5), *pairs("bb", 1), Record(kind="text", text="no answer to score"), *pairs("cc", 2)]
    assert [r.group for r in round_robin(records, 5)] == ["aa", "bb", "", "cc", "aa"]
    targets = generation_targets(tiny_tokenizer, records, limit=4, max_prompt_tokens=512)
    assert [t.group for t in targets] == ["aa", "bb", "cc", "aa"]
    assert targets[0].reference == "aa-0 ok"
    assert generation_targets(tiny_tokenizer, records, limit=4, max_prompt_tokens=5) == []


def test_batched_greedy_generation_equals_one_at_a_time_and_is_bounded(tiny_checkpoint):
    model = lora_model(str(tiny_checkpoint), CFG)
    tokenizer = load_tokenizer(str(tiny_checkpoint))
    # Prompts of different lengths: the batch is left-padded, which must not change any answer.
    records = [*pairs("aa", 2), *pairs("a-much-longer-group-name-for-padding", 2)]
    targets = generation_targets(tokenizer, records, limit=4, max_prompt_tokens=512)
    assert len({len(t.prompt_ids) for t in targets}) > 1
    batched = generate(model, tokenizer, targets, max_new_tokens=6, batch_size=4)
    alone = [generate(model, tokenizer, [t], max_new_tokens=6)[0] for t in targets]
    assert batched == alone
    for answer in batched:
        assert len(tokenizer.encode(answer, add_special_tokens=False)) <= 6 + 1  # re-tokenizing may split one


def test_heldout_scores_report_per_group_loss_and_metrics_and_training_raises_chrf(tiny_checkpoint):
    tokenizer = load_tokenizer(str(tiny_checkpoint))
    records = [*pairs("aa", 4), *pairs("bb", 4)]
    examples = group_examples(tokenizer, records, CFG.seq_len)
    targets = generation_targets(tokenizer, records, limit=8, max_prompt_tokens=CFG.seq_len)
    model = lora_model(str(tiny_checkpoint), CFG)
    metrics = [events.CHRF, events.EXACT_MATCH]
    loss, tokens, before = heldout_scores(model, tokenizer, examples, targets, metrics, max_new_tokens=8)
    # The overall loss is the one pass over every example would give, split by group.
    everything = encode_all(tokenizer, records, CFG.seq_len)
    assert (loss, tokens) == pytest.approx(evaluate(model, everything, int(tokenizer.pad_token_id)), rel=1e-5)
    assert set(before.groups) == {"aa", "bb"} and before.records == 8
    assert before.groups["aa"][events.GROUP_RECORDS] == 4
    assert sum(g[events.GROUP_TOKENS] for g in before.groups.values()) == tokens
    # What goes into the round event passes the contract's bounds.
    event = {"round": 0, "eval_loss": loss, **before.fields()}
    assert events.parse_evaluation(event).scores == before

    # Trained on exactly these pairs, the tiny model reproduces more of them: chrF and loss move the right way.
    train(model, everything, CFG, int(tokenizer.pad_token_id), round_seed=1)
    loss_after, _, after = heldout_scores(model, tokenizer, examples, targets, metrics, max_new_tokens=8)
    assert loss_after < loss
    assert after.metrics[events.CHRF] > before.metrics[events.CHRF]


def test_without_metrics_or_groups_only_the_loss_is_measured(tiny_checkpoint):
    tokenizer = load_tokenizer(str(tiny_checkpoint))
    model = lora_model(str(tiny_checkpoint), CFG)
    records = [Record(kind="text", text="plain held-out text " * 4)]
    loss, tokens, scores = heldout_scores(model, tokenizer, group_examples(tokenizer, records, 64), [], [], 8)
    assert tokens > 0 and torch.isfinite(torch.tensor(loss))
    assert scores == events.HeldoutScores()
