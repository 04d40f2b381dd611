"""Compare a shadow's outputs with the primary's (off the hot path). Pure functions."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

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
            da, db = decided(a64, threshold), decided(b64, threshold)
            rows += len(da)
            agreed += int((da == db).sum())
    return Comparison(max_abs, max_rel, rows, agreed)


# A shadow copy carries the primary's decisions (`x-aios-shadow-compare`), so that the
# shadow's sidecar records the agreement in the shadow's own record: at most this many
# rows, and an output named as Triton names tensors.
MAX_EXPECTED_ROWS = 1024
_OUTPUT_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


@dataclass(frozen=True, slots=True)
class Expected:
    """The primary's decision per row: ``output`` >= ``threshold``."""

    output: str
    threshold: float
    decisions: tuple[bool, ...]


def decided(values: NDArray[Any], threshold: float) -> NDArray[np.bool_]:
    """Each row's decision: every value of the row >= ``threshold``."""
    v64 = values.astype(np.float64)
    out: NDArray[np.bool_] = (v64 >= threshold).reshape(len(v64), -1).all(axis=1)
    return out


def encode_expected(output: str, threshold: float, values: NDArray[Any]) -> str | None:
    """The header value for the primary's ``output`` values (None if it cannot carry them:
    too many rows, or a name the header format does not take)."""
    if not _OUTPUT_NAME.fullmatch(output) or not 0 < len(values) <= MAX_EXPECTED_ROWS:
        return None
    bits = "".join("1" if d else "0" for d in decided(values, threshold))
    return f"{output}>={threshold!r}:{bits}"


def parse_expected(text: str) -> Expected | None:
    """The header value back (None for anything malformed: it is only ever advice)."""
    head, _, bits = text.rpartition(":")
    output, _, threshold = head.partition(">=")
    if not _OUTPUT_NAME.fullmatch(output) or not 0 < len(bits) <= MAX_EXPECTED_ROWS or \
            bits.strip("01"):
        return None
    try:
        value = float(threshold)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return Expected(output, value, tuple(b == "1" for b in bits))


def agreement(expected: Expected, outputs: Mapping[str, NDArray[Any]]) -> int | None:
    """How many of the shadow's decisions agree with the primary's (None when the shadow
    did not answer that output for as many rows)."""
    values = outputs.get(expected.output)
    if values is None or values.ndim == 0 or len(values) != len(expected.decisions):
        return None
    ours = np.asarray(expected.decisions)
    return int((decided(values, expected.threshold) == ours).sum())
