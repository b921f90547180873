"""Plain PyTorch + PEFT: model, data batches, train, evaluate. Nothing here knows about Flower."""

from __future__ import annotations

import contextlib
import contextvars
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from federation.config import TrainConfig
from federation.data import Record, encode_record
from federation.lora_variants import is_frozen

Example = tuple[list[int], list[int]]  # (input_ids, labels), labels -100 where no loss


class Cancelled(Exception):
    """The training loop stopped between steps because its `stop_when` check said so."""


# A check the loops below call between steps. A ContextVar, not a global: a long-lived process (the node's warm
# worker) sets it around one job in the thread that runs it; elsewhere it is unset and costs nothing.
_should_stop: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("should_stop", default=None)


@contextlib.contextmanager
def stop_when(check: Callable[[], bool]) -> Iterator[None]:
    """Within this block, `train` and `evaluate` raise Cancelled between steps once `check()` is true."""
    token = _should_stop.set(check)
    try:
        yield
    finally:
        _should_stop.reset(token)


def check_stop() -> None:
    check = _should_stop.get()
    if check is not None and check():
        raise Cancelled("stopped between steps")


def checkpoint_key(model_path: str) -> tuple:
    """What identifies a checkpoint's content cheaply: its resolved path and each top-level file's size and mtime.

    A process that keeps models loaded (the warm worker) must notice a checkpoint replaced on disk.
    """
    root = Path(model_path).resolve()
    if not root.is_dir():
        return (str(root), ())  # the loaders say what is wrong with it
    files = sorted((p.name, st.st_size, st.st_mtime_ns) for p in root.iterdir() if p.is_file() for st in [p.stat()])
    return (str(root), tuple(files))


def load_tokenizer(model_path: str) -> PreTrainedTokenizerBase:
    return _load_tokenizer(model_path, checkpoint_key(model_path))


@lru_cache(maxsize=2)
def _load_tokenizer(model_path: str, _key: tuple) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(model_path: str) -> torch.nn.Module:
    """Load a local HF checkpoint on CPU in fp32 (no hub access: a path is required)."""
    if not (Path(model_path) / "config.json").is_file():
        raise FileNotFoundError(f"{model_path}: not a model checkpoint directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.config.use_cache = False
    return model


def lora_model(model_path: str, cfg: TrainConfig) -> PeftModel:
    """Base model wrapped with a freshly initialised LoRA adapter (B = 0, so it equals the base)."""
    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(load_base_model(model_path), lora)


_DEFAULT_THREADS = torch.get_num_threads()
# One LoRA-wrapped base model kept for the life of the process: (checkpoint key, LoRA settings) -> model.
_warm_model: tuple[tuple, PeftModel] | None = None


def reusable_lora_model(model_path: str, cfg: TrainConfig) -> PeftModel:
    """`lora_model`, loaded once per process while the checkpoint and the LoRA settings stay the same.

    The caller must overwrite every adapter tensor (`set_adapter_state` checks that) and `train` seeds itself, so a
    reused model gives exactly what a fresh one would. peft's get_peft_model changes the base model in place (it
    swaps in LoRA layers): another LoRA setting therefore loads a fresh base rather than wrapping the old one twice.
    """
    global _warm_model
    torch.set_num_threads(cfg.threads if cfg.threads > 0 else _DEFAULT_THREADS)  # a previous job may have set it
    key = (checkpoint_key(model_path), cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, tuple(cfg.modules))
    if _warm_model is not None and _warm_model[0] == key:
        return _warm_model[1]
    _warm_model = None  # release the old model before loading the next: never two in memory
    model = lora_model(model_path, cfg)
    _warm_model = (key, model)
    return model


def get_adapter_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """Only the adapter tensors: this is all that ever travels."""
    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def set_adapter_state(model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    """Load every adapter tensor; a state that leaves some out is refused (a reused model would keep stale ones)."""
    result = set_peft_model_state_dict(model, state)
    unexpected = [k for k in result.unexpected_keys if "lora_" in k]
    if unexpected:
        raise ValueError(f"adapter tensors do not fit this model: {unexpected[:3]}")
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise ValueError(f"adapter tensors missing for this model: {missing[:3]} ({len(missing)} in all)")


def encode_all(tokenizer: PreTrainedTokenizerBase, records: list[Record], seq_len: int) -> list[Example]:
    """Tokenize records; drop those that keep no trainable token after truncation."""
    examples = []
    for record in records:
        ids, labels = encode_record(tokenizer, record, seq_len)
        if any(label != -100 for label in labels):
            examples.append((ids, labels))
    return examples


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def _sum_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed token cross-entropy over labelled positions, and how many there were."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shift_logits = logits[:, :-1, :].reshape(-1, logits.size(-1))
    shift_labels = batch["labels"][:, 1:].reshape(-1)
    count = int((shift_labels != -100).sum())
    loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
    return loss, count


@dataclass
class TrainResult:
    loss: float  # mean token loss over all local steps
    steps: int
    examples: int  # distinct training examples available on the node
    tokens: int  # tokens processed (input positions, padding excluded)
    loss_tokens: int  # tokens that carried loss
    seconds: float


@contextlib.contextmanager
def _trainable_for(model: PeftModel, variant: str) -> Iterator[None]:
    """Within this block only the adapter parameters `variant` trains require gradients (FFA-LoRA: not lora_A).

    Set for every adapter parameter on entry, and all trainable again on exit, whatever happened: a warm worker
    reuses one model across jobs and campaigns, and a "lora" job after an "ffa" one must train A again.
    """
    adapter = [(name, p) for name, p in model.named_parameters() if "lora_" in name]
    try:
        for name, p in adapter:
            p.requires_grad_(not is_frozen(name, variant))
        yield
    finally:
        for _, p in adapter:
            p.requires_grad_(True)


def train(model: PeftModel, examples: list[Example], cfg: TrainConfig, pad_id: int, round_seed: int) -> TrainResult:
    """`local_steps` AdamW steps on batches sampled without replacement, cycling through the data.

    Only the adapter tensors `cfg.lora_variant` trains change (federation.lora_variants); the others stay bitwise
    as they were (AdamW never sees them).
    """
    if not examples:
        raise ValueError("no training examples")
    with _trainable_for(model, cfg.lora_variant):
        return _train(model, examples, cfg, pad_id, round_seed)


def _train(model: PeftModel, examples: list[Example], cfg: TrainConfig, pad_id: int, round_seed: int) -> TrainResult:
    started = time.perf_counter()
    rng = random.Random(cfg.seed * 100_003 + round_seed)
    # Dropout draws from torch's generator: seed it here, so a round depends only on its inputs, not on what
    # the process did before (a warm worker's previous jobs, a model loaded fresh or reused).
    torch.manual_seed(cfg.seed * 100_003 + round_seed)
    order: list[int] = []
    for p in model.parameters():
        p.grad = None  # a job stopped mid-step must not leak gradients into the next
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    model.train()
    total_loss, total_count, tokens = 0.0, 0, 0
    for _ in range(cfg.local_steps):
        check_stop()
        if len(order) < cfg.batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order.extend(fresh)
        picked = [examples[order.pop()] for _ in range(min(cfg.batch_size, len(examples)))]
        batch = collate(picked, pad_id)
        loss_sum, count = _sum_loss(model, batch)
        (loss_sum / max(count, 1)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total_loss += float(loss_sum.detach())
        total_count += count
        tokens += int(batch["attention_mask"].sum())
    return TrainResult(
        loss=total_loss / max(total_count, 1),
        steps=cfg.local_steps,
        examples=len(examples),
        tokens=tokens,
        loss_tokens=total_count,
        seconds=time.perf_counter() - started,
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, examples: list[Example], pad_id: int, batch_size: int = 8) -> tuple[float, int]:
    """Token-weighted mean loss over the labelled tokens; returns (loss, tokens)."""
    if not examples:
        return float("nan"), 0
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        check_stop()
        loss_sum, n = _sum_loss(model, collate(examples[start : start + batch_size], pad_id))
        total += float(loss_sum)
        count += n
    return total / max(count, 1), count


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
