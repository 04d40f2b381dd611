"""The example model's features, and how a training profile describes a column: the
binning rule and the distribution sketch the drift tests use.

Shared by the model builder (which writes profiles) and the sidecar (which reads them),
so both bin and score a value the same way.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

MODEL_NAME = "claims_risk"
INPUT_NAME = "features"
OUTPUT_NAME = "risk_score"
# Claims scored at or above this go to a person (the drift monitor watches the rate).
DECISION_THRESHOLD = 0.35


@dataclass(frozen=True)
class Feature:
    """One column of the ``features`` input tensor."""

    name: str
    unit: str
    description: str


FEATURES = (
    Feature("claim_amount", "EUR", "amount claimed"),
    Feature("policy_tenure_months", "months", "age of the policy when the loss happened"),
    Feature("prior_claims", "count", "claims on the policy in the previous five years"),
    Feature("days_to_report", "days", "days between the loss and its report"),
    Feature("claimant_age", "years", "age of the policy holder"),
    Feature("vehicle_age_years", "years", "age of the insured vehicle"),
    Feature("police_report", "0/1", "a police report was filed"),
    Feature("witness_present", "0/1", "an independent witness is named"),
)


def bin_index(edges: Sequence[float] | NDArray[np.float64],
              values: NDArray[Any]) -> NDArray[np.intp]:
    """Bin values by the profile's internal edges: bin i holds edges[i-1] <= v < edges[i]."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")


# A profile keeps each column's distribution as a sketch of at most SKETCH_KNOTS points:
# every distinct training value with its cumulative share when there are that few
# (counts, flags, rounded values), else the value at each 1/(SKETCH_KNOTS - 1) quantile.
SKETCH_KNOTS = 1001
# Normal scores are clipped to this tail probability (|z| <= 3.7): a value beyond the
# training range must not weigh like a thousand values inside it.
SCORE_TAIL = 1e-4
KINDS = ("binary", "discrete", "continuous")
# Relative distance within which a served value is its knot (FP32 has ~7 digits).
KNOT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Sketch:
    """A column's training distribution (see SKETCH_KNOTS).

    ``support`` is increasing; ``cdf[i]`` = P(X <= support[i]); ``scores[i]`` is the
    normal score of support[i] (the standard normal quantile of its mid-cdf), whose mean
    and std over the training rows are ``score_mean``, ``score_std``. ``kind``:
    ``continuous`` (a quantile grid: the CDF between knots is linear), else the CDF is a
    step at each knot (``binary``: two values).
    """

    kind: str
    support: NDArray[np.float64]
    cdf: NDArray[np.float64]
    scores: NDArray[np.float64]
    score_mean: float
    score_std: float
    n: int  # training rows it was made from

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "support": _rounded(self.support),
                "cdf": _rounded(self.cdf), "scores": _rounded(self.scores),
                "score_mean": round(self.score_mean, 6), "score_std": round(self.score_std, 6)}

    @staticmethod
    def from_json(doc: Any) -> Sketch:
        kind = str(doc["kind"])
        if kind not in KINDS:
            raise ValueError(f"sketch kind {kind!r} is not one of {', '.join(KINDS)}")
        support, cdf, scores = (np.asarray(doc[k], dtype=np.float64)
                                for k in ("support", "cdf", "scores"))
        if not (len(support) == len(cdf) == len(scores) >= 2) or \
                np.any(np.diff(support) <= 0) or np.any(np.diff(cdf) < 0):
            raise ValueError("a sketch needs >= 2 increasing knots with a rising cdf")
        return Sketch(kind, support, cdf, scores, float(doc["score_mean"]),
                      float(doc["score_std"]), int(doc["n"]))

    def probabilities(self) -> NDArray[np.float64]:
        """Each knot's share of the training rows (discrete kinds)."""
        return np.diff(self.cdf, prepend=0.0)

    def normal_scores(self, values: NDArray[Any]) -> NDArray[np.float64]:
        """Standardized normal scores of ``values``: mean 0, std 1 over training rows."""
        v = np.asarray(values, dtype=np.float64)
        if self.kind == "continuous":
            raw = np.interp(v, self.support, self.scores)
        else:
            raw = self.scores[self.knots(v)]
        out: NDArray[np.float64] = (raw - self.score_mean) / self.score_std
        return out

    def knots(self, values: NDArray[Any]) -> NDArray[np.intp]:
        """Each value's knot (discrete kinds): the one it equals, to float32 precision (a
        served FP32 value is not bit for bit the knot stored in JSON), else the nearest
        below (a value training never saw takes its neighbour's)."""
        v = np.asarray(values, dtype=np.float64)
        at = np.searchsorted(self.support, v + np.abs(v) * KNOT_TOLERANCE + 1e-12,
                             side="right") - 1
        out: NDArray[np.intp] = np.clip(at, 0, len(self.support) - 1)
        return out

    def cdf_at(self, values: NDArray[Any]) -> NDArray[np.float64]:
        """The training CDF at ``values`` (continuous kind: linear between knots)."""
        v = np.asarray(values, dtype=np.float64)
        out: NDArray[np.float64] = np.interp(v, self.support, self.cdf, left=0.0, right=1.0)
        return out


def _rounded(values: NDArray[np.float64]) -> list[float]:
    return [round(float(v), 9) for v in values]


def normal_quantiles(p: NDArray[np.float64]) -> NDArray[np.float64]:
    """The standard normal quantiles of ``p``, clipped to SCORE_TAIL."""
    normal = statistics.NormalDist()
    return np.asarray([normal.inv_cdf(float(q)) for q in
                       np.clip(p, SCORE_TAIL, 1 - SCORE_TAIL)], dtype=np.float64)


def build_sketch(values: NDArray[Any]) -> Sketch:
    """The sketch of a training column."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    distinct, counts = np.unique(v, return_counts=True)
    if len(distinct) <= SKETCH_KNOTS:
        kind = "binary" if set(distinct.tolist()) <= {0.0, 1.0} else "discrete"
        support = distinct if len(distinct) >= 2 else np.array([distinct[0], distinct[0] + 1])
        counts = counts if len(distinct) >= 2 else np.array([counts[0], 0])
        cdf = np.cumsum(counts) / len(v)
        mid = cdf - counts / (2 * len(v))
        scores = normal_quantiles(mid)
    else:
        kind = "continuous"
        probs = np.linspace(0.0, 1.0, SKETCH_KNOTS)
        support = np.quantile(v, probs)
        keep = np.concatenate([[True], np.diff(support) > 0])  # ties: the first knot
        support, cdf = support[keep], probs[keep]
        scores = normal_quantiles(cdf)
    raw = Sketch(kind, support, cdf, scores, 0.0, 1.0, len(v)).normal_scores(v)
    return Sketch(kind, support, cdf, scores, float(raw.mean()), float(raw.std()) or 1.0,
                  len(v))


def sketch_from_bins(minimum: float, edges: tuple[float, ...],
                     frequencies: NDArray[np.float64], n: int) -> Sketch:
    """A coarse sketch from a profile made before sketches: its decile bins as the values
    of a discrete column (knot i is bin i's lower edge), so the tests stay exact and see
    no finer than the bins did."""
    support = np.asarray([min(minimum, edges[0] - 1.0) if edges else minimum, *edges],
                         dtype=np.float64)
    shares = frequencies[:len(support)] / max(float(frequencies[:len(support)].sum()), 1e-12)
    cdf = np.cumsum(shares)
    scores = normal_quantiles(cdf - shares / 2)
    mean = float((shares * scores).sum())
    std = math.sqrt(float((shares * (scores - mean) ** 2).sum())) or 1.0
    return Sketch("discrete", support, cdf, scores, mean, std, n)
