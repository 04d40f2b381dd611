"""The synthetic claims book the example model is trained on (numpy only).

Also used to draw realistic traffic: load tests, drift tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

SEED = 15_000


def synthesize_claims(n: int, seed: int = SEED) -> tuple[NDArray[Any], NDArray[Any]]:
    """Return (features float32 [n, 8], label float32 [n]) for a synthetic claims book.

    The label is "needs manual review / likely fraudulent": drawn from a hidden logistic
    model with one interaction (large claim on a young policy) that a linear model on raw
    features cannot fit, so version 2 has something honest to gain.
    """
    rng = np.random.default_rng(seed)
    amount = np.clip(rng.lognormal(mean=8.0, sigma=1.0, size=n), 100.0, 250_000.0)
    tenure = np.clip(np.round(rng.gamma(2.0, 24.0, size=n)), 0, 480)
    prior = np.clip(rng.poisson(0.5, size=n), 0, 12)
    delay = np.clip(np.round(rng.exponential(10.0, size=n)), 0, 365)
    age = np.clip(np.round(rng.normal(45.0, 14.0, size=n)), 18, 90)
    vehicle = np.clip(np.round(rng.gamma(2.0, 3.0, size=n), 1), 0, 30)
    police = (rng.random(n) < 0.6).astype(np.float64)
    witness = (rng.random(n) < 0.35).astype(np.float64)

    log_amount = np.log(amount)
    logit = (
        -2.2
        + 0.8 * (log_amount - 8.0)
        - 0.015 * tenure
        + 0.45 * prior
        + 0.04 * delay
        - 0.01 * (age - 45.0)
        + 0.05 * vehicle
        - 0.9 * police
        - 0.6 * witness
        + 1.5 * ((log_amount > 9.0) & (tenure < 12)).astype(np.float64)
    )
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    features = np.stack([amount, tenure, prior, delay, age, vehicle, police, witness], axis=1)
    return features.astype(np.float32), label
