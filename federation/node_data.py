"""A node's local dataset, loaded once per process (a warm worker keeps it across rounds): validated, split,
tokenized. Cached by what it depends on: the data files (paths, sizes, mtimes), the checkpoint (its tokenizer) and
the TrainConfig fields used here."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from federation.config import TrainConfig
from federation.data import fingerprint, load_records, split_records
from federation.task import Example, checkpoint_key, encode_all, load_tokenizer


@dataclass(frozen=True)
class NodeDataset:
    train: list[Example]
    val: list[Example]
    fingerprint: str  # sha256 over the normalized records: the only trace of the data that leaves
    records: int
    pad_id: int


def node_dataset(data_path: str, model_path: str, cfg: TrainConfig) -> NodeDataset:
    root = Path(data_path)
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    stamp = tuple(sorted((str(p), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()]))
    return _load(
        data_path, stamp, model_path, checkpoint_key(model_path), cfg.seq_len, cfg.val_fraction, cfg.seed,
        cfg.max_eval_records,
    )  # fmt: skip


@lru_cache(maxsize=4)
def _load(
    data_path: str, _stamp: tuple, model_path: str, _model: tuple, seq_len: int, val_fraction: float, seed: int,
    max_val: int,
) -> NodeDataset:  # fmt: skip
    records = load_records(data_path)
    train_records, val_records = split_records(records, val_fraction, seed)
    tokenizer = load_tokenizer(model_path)
    return NodeDataset(
        train=encode_all(tokenizer, train_records, seq_len),
        val=encode_all(tokenizer, val_records[:max_val], seq_len),
        fingerprint=fingerprint(records),
        records=len(records),
        pad_id=int(tokenizer.pad_token_id),
    )
