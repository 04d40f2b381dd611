"""The example model's features and the binning rule its training profile uses.

Shared by the model builder (which writes profiles) and the sidecar (which reads them),
so both bin a value the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

MODEL_NAME = "claims_risk"
INPUT_NAME = "features"
OUTPUT_NAME = "risk_score"


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
