"""Plain PyTorch/PEFT pieces on a tiny random Llama: only adapter tensors travel, training learns."""

from __future__ import annotations

import pytest
import torch
from flwr.app import RecordDict

from federation import task
from federation.config import TrainConfig
from federation.data import load_records
from federation.lora_variants import trained_keys
from federation.packing import ARRAYS_KEY, LAYOUT_KEY, pack_records, unpack_content
from federation.task import (
    Cancelled,
    encode_all,
    evaluate,
    get_adapter_state,
    load_tokenizer,
    lora_model,
    reusable_lora_model,
    set_adapter_state,
    stop_when,
    train,
)

CFG = TrainConfig(lora_r=4, lora_alpha=8, local_steps=6, lr=0.01, seq_len=64, batch_size=4, threads=1)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_only_lora_tensors_travel_and_survive_the_packed_wire_form(tiny_checkpoint, dtype):
    model = lora_model(str(tiny_checkpoint), CFG)
    state = get_adapter_state(model)
    assert state and all("lora_" in k for k in state)
    total = sum(p.numel() for p in model.parameters())
    assert sum(t.numel() for t in state.values()) < total / 10

    # Perturb, pack as the ClientApp does, unpack against a fresh model's own adapter and load it there.
    state = {k: v + torch.randn_like(v) for k, v in state.items()}
    arrays, layout = pack_records({k: v.numpy() for k, v in state.items()}, dtype)
    other = lora_model(str(tiny_checkpoint), CFG)
    own = {k: tuple(v.shape) for k, v in get_adapter_state(other).items()}
    shipped = unpack_content(RecordDict({ARRAYS_KEY: arrays, LAYOUT_KEY: layout}), own, dtype)
    set_adapter_state(other, {k: torch.from_numpy(v) for k, v in shipped.items()})
    tolerance = {"float32": 0.0, "float16": 1e-3, "bfloat16": 8e-3}[dtype]
    for key, value in get_adapter_state(other).items():
        torch.testing.assert_close(value, state[key], rtol=tolerance, atol=tolerance)


def test_fresh_adapter_equals_the_base_model(tiny_checkpoint):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    model = lora_model(str(tiny_checkpoint), CFG)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits)


def test_local_training_lowers_loss_on_the_training_data(tiny_checkpoint, tiny_corpus):
    tokenizer = load_tokenizer(str(tiny_checkpoint))
    examples = encode_all(tokenizer, load_records(tiny_corpus / "node-1")[:8], CFG.seq_len)
    model = lora_model(str(tiny_checkpoint), CFG)
    before, tokens = evaluate(model, examples, tokenizer.pad_token_id)
    result = train(model, examples, CFG, tokenizer.pad_token_id, round_seed=1)
    after, _ = evaluate(model, examples, tokenizer.pad_token_id)
    assert tokens > 0 and result.steps == CFG.local_steps and result.tokens > 0
    assert after < before


def test_training_depends_on_its_inputs_not_on_the_process_random_state(tiny_checkpoint, tiny_corpus):
    tokenizer = load_tokenizer(str(tiny_checkpoint))
    examples = encode_all(tokenizer, load_records(tiny_corpus / "node-1")[:8], CFG.seq_len)
    start = get_adapter_state(lora_model(str(tiny_checkpoint), CFG))
    results = []
    for noise in (1, 2):
        model = lora_model(str(tiny_checkpoint), CFG)
        set_adapter_state(model, start)
        torch.rand(noise * 100)  # whatever ran before in this process (a warm worker's previous job)
        train(model, examples, CFG, tokenizer.pad_token_id, round_seed=3)
        results.append(get_adapter_state(model))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_training_stops_between_steps_when_asked(tiny_checkpoint, tiny_corpus):
    tokenizer = load_tokenizer(str(tiny_checkpoint))
    examples = encode_all(tokenizer, load_records(tiny_corpus / "node-1")[:8], CFG.seq_len)
    model = lora_model(str(tiny_checkpoint), CFG)
    steps = []

    def stop_after_two() -> bool:
        steps.append(1)
        return len(steps) > 2

    with pytest.raises(Cancelled), stop_when(stop_after_two):
        train(model, examples, CFG, tokenizer.pad_token_id, round_seed=1)
    assert len(steps) == 3
    train(model, examples, CFG, tokenizer.pad_token_id, round_seed=1)  # outside the block nothing stops it


def test_a_long_lived_process_reuses_the_loaded_model_until_the_lora_shape_changes(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(task, "_warm_model", None)
    first = reusable_lora_model(str(tiny_checkpoint), CFG)
    assert reusable_lora_model(str(tiny_checkpoint), CFG) is first
    other = reusable_lora_model(str(tiny_checkpoint), TrainConfig(**{**vars(CFG), "lora_r": 2}))
    assert other is not first  # another LoRA shape: a fresh base, not the old one wrapped twice
    assert {v.shape[0] for k, v in get_adapter_state(other).items() if "lora_A" in k} == {2}


def test_an_adapter_state_that_leaves_tensors_out_is_refused(tiny_checkpoint):
    model = lora_model(str(tiny_checkpoint), CFG)
    state = get_adapter_state(model)
    state.pop(next(iter(state)))
    with pytest.raises(ValueError, match="adapter tensors missing"):
        set_adapter_state(model, state)


def test_ffa_training_keeps_lora_a_bitwise_and_a_following_lora_job_on_the_same_model_trains_a_again(
    tiny_checkpoint, tiny_corpus
):
    tokenizer = load_tokenizer(str(tiny_checkpoint))
    examples = encode_all(tokenizer, load_records(tiny_corpus / "node-1")[:8], CFG.seq_len)
    model = lora_model(str(tiny_checkpoint), CFG)  # one model, as a warm worker keeps it across jobs
    before = {k: v.clone() for k, v in get_adapter_state(model).items()}  # on CPU the state shares the weights
    assert trained_keys(before, "lora") == list(before)
    assert trained_keys(before, "ffa") == [k for k in before if ".lora_B." in k] and trained_keys(before, "ffa")

    train(model, examples, TrainConfig(**{**vars(CFG), "lora_variant": "ffa"}), tokenizer.pad_token_id, 1)
    after_ffa = {k: v.clone() for k, v in get_adapter_state(model).items()}
    for key in before:
        assert torch.equal(after_ffa[key], before[key]) == ("lora_A" in key), key  # A bitwise kept, every B moved
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)  # not left frozen

    train(model, examples, CFG, tokenizer.pad_token_id, 2)  # the next job is plain LoRA
    after_lora = get_adapter_state(model)
    assert all(not torch.equal(after_lora[k], after_ffa[k]) for k in after_ffa if "lora_A" in k)


def test_an_ffa_job_stopped_between_steps_leaves_the_model_trainable_for_the_next(tiny_checkpoint, tiny_corpus):
    tokenizer = load_tokenizer(str(tiny_checkpoint))
    examples = encode_all(tokenizer, load_records(tiny_corpus / "node-1")[:8], CFG.seq_len)
    model = lora_model(str(tiny_checkpoint), CFG)
    with pytest.raises(Cancelled), stop_when(lambda: True):
        train(model, examples, TrainConfig(**{**vars(CFG), "lora_variant": "ffa"}), tokenizer.pad_token_id, 1)
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
