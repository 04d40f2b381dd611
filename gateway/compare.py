"""Compare a shadow's outputs with the primary's (off the hot path)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aios.tensors import Outputs


@dataclass(frozen=True, slots=True)
class Comparison:
    """How a shadow's outputs differ from the primary's."""

    max_abs: float
    max_rel: float
    rows: int  # decisions compared (0 without a threshold)
    agreed: int


def compare(primary: Outputs, shadow: Outputs, output: str, threshold: float | None,
            ) -> Comparison:
    """Per-output max abs/rel difference over common outputs; with a threshold, decision
    agreement per row of ``output`` (decision = value >= threshold)."""
    names = [output] if output else sorted(set(primary) & set(shadow))
    max_abs = max_rel = 0.0
    rows = agreed = 0
    for name in names:
        a, b = primary.get(name), shadow.get(name)
        if a is None or b is None or a.shape != b.shape:
            raise ValueError(f"output '{name}' missing or shaped differently in the shadow")
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        diff = np.abs(a64 - b64)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / np.maximum(np.abs(a64), 1e-12)).max()))
        if threshold is not None:
            da = (a64 >= threshold).reshape(len(a64), -1).all(axis=1)
            db = (b64 >= threshold).reshape(len(b64), -1).all(axis=1)
            rows += len(da)
            agreed += int((da == db).sum())
    return Comparison(max_abs, max_rel, rows, agreed)
