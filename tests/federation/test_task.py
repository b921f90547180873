"""Plain PyTorch/PEFT pieces on a tiny random Llama: only adapter tensors travel, training learns."""

from __future__ import annotations

import pytest
import torch
from flwr.app import RecordDict

from federation.config import TrainConfig
from federation.data import load_records
from federation.packing import ARRAYS_KEY, LAYOUT_KEY, pack_records, unpack_content
from federation.task import (
    encode_all,
    evaluate,
    get_adapter_state,
    load_tokenizer,
    lora_model,
    set_adapter_state,
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
