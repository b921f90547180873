"""Hostile node behaviour, for tests and benchmarks only: what a broken or malicious node might send.

Nothing in `federation/` can reach this: only a node started with `python -m testbed.hostile_node --attack MODE`
(which warns loudly) applies it, to the reply the installed ClientApp produced (testbed/hostile_runtime.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hostile_node imports MODES for its command line; keep torch out of its start-up
    import torch

MODES = ("nan", "wrong-shape", "scale", "sign-flip")
SCALE = 50.0


def apply_attack(
    mode: str, trained: dict[str, torch.Tensor], received: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Turn an honest update into a hostile one. `received` is the global adapter the round started from."""
    if mode not in MODES:
        raise ValueError(f"unknown attack {mode!r}; one of {', '.join(MODES)}")
    out = {k: v.clone() for k, v in trained.items()}
    first = next(iter(out))
    if mode == "nan":
        out[first].view(-1)[0] = float("nan")
    elif mode == "wrong-shape":
        out[first] = out[first][..., :-1].contiguous()  # one column short
    elif mode == "scale":
        out = {k: received[k] + SCALE * (v - received[k]) for k, v in trained.items()}
    else:  # sign-flip: the honest update, reversed
        out = {k: received[k] - (v - received[k]) for k, v in trained.items()}
    return out
