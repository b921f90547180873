"""Checks on one node's update before it may reach aggregation. Plain numpy: nothing here knows about Flower.

An update is what a node sends minus the global arrays it was sent. Malformed replies (wrong tensor names,
shapes, dtypes, or non-finite values) are never aggregated; a norm bound catches well-formed but outsized ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Verdict:
    reason: str = ""  # empty when accepted
    norm: float | None = None  # L2 norm of (reply - global), when it could be computed

    @property
    def accepted(self) -> bool:
        return not self.reason


def _names(keys: set[str]) -> str:
    shown = sorted(keys)[:3]
    return ", ".join(shown) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def check_update(reply: Arrays, reference: Arrays, max_norm: float = 0.0) -> Verdict:
    """Structure first (names, shapes, dtypes must equal the campaign's adapter), then finiteness, then norm."""
    missing, unexpected = set(reference) - set(reply), set(reply) - set(reference)
    if missing:
        return Verdict(f"missing tensors: {_names(missing)}")
    if unexpected:
        return Verdict(f"unexpected tensors: {_names(unexpected)}")
    for key, ref in reference.items():
        got = reply[key]
        if got.shape != ref.shape:
            return Verdict(f"wrong shape for {key}: {tuple(got.shape)} instead of {tuple(ref.shape)}")
        if got.dtype != ref.dtype:
            return Verdict(f"wrong dtype for {key}: {got.dtype} instead of {ref.dtype}")
    for key, got in reply.items():
        if not np.isfinite(got).all():
            return Verdict(f"non-finite values (NaN/inf) in {key}")
    norm = update_norm(reply, reference)
    if not math.isfinite(norm):  # finite tensors can still overflow float64 when squared
        return Verdict("update norm is not finite")
    if max_norm > 0 and norm > max_norm:
        return Verdict(f"update norm {norm:.4g} exceeds the bound {max_norm:.4g}", norm)
    return Verdict(norm=norm)


def update_vector(reply: Arrays, reference: Arrays) -> np.ndarray:
    """(reply - reference) flattened in the reference's key order, in float64."""
    return np.concatenate(
        [(reply[k].astype(np.float64) - reference[k].astype(np.float64)).ravel() for k in reference] or [np.zeros(0)]
    )


def update_norm(reply: Arrays, reference: Arrays) -> float:
    return float(np.linalg.norm(update_vector(reply, reference)))


def ratio_outliers(norms: Mapping[int, float], ratio: float) -> dict[int, str]:
    """Updates more than `ratio` times the median norm of this round's updates; needs 3 or more to judge.

    Scale-free, so it needs no per-model calibration; with two updates the median cannot tell who is odd.
    """
    if ratio <= 0 or len(norms) < 3:
        return {}
    median = float(np.median(list(norms.values())))
    if median <= 0:
        return {}
    return {
        node: f"update norm {norm:.4g} is {norm / median:.1f}x the round's median {median:.4g} (limit {ratio:g}x)"
        for node, norm in norms.items()
        if norm > ratio * median
    }


def cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cosine similarity; None when either vector is zero (no direction to compare)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0 or not (math.isfinite(na) and math.isfinite(nb)):
        return None
    return float(np.dot(a, b) / (na * nb))
