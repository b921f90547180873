from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from testbed.tiny import build_tiny_checkpoint


def test_loads_and_runs_forward(tiny_checkpoint, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    ids = torch.tensor([tiny_tokenizer.encode("def f(x): return x")])
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], len(tiny_tokenizer))
    assert torch.isfinite(out.loss)
    assert model.config.tie_word_embeddings


def test_special_tokens_and_chat_template(tiny_tokenizer):
    tok = tiny_tokenizer
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(tok.encode("Hello, wörld!")) == "Hello, wörld!"  # byte-level: nothing unknown


def test_idempotent_and_deterministic(tiny_checkpoint, tmp_path):
    assert build_tiny_checkpoint(tiny_checkpoint) == tiny_checkpoint  # existing: no rebuild
    again = build_tiny_checkpoint(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_checkpoint / name).read_bytes()
