"""Train the example claim-scoring model, both versions, deterministically.

`aios models build` generates a synthetic claims data set, trains version 1 (a logistic
regression on six raw features) and version 2 (a small MLP on all eight features, with the
claim amount on a log scale: a better fit, measured on a holdout set), and writes into each
version folder of the Triton model repository:

- ``model.pt``: the TorchScript model the Triton python backend serves;
- ``profile.json``: the training feature profile (per feature dtype, range, mean/std,
  quantile bin edges and training frequencies, the distribution sketch the drift tests
  use, and the same for the output; the correlation of the features' normal scores; the
  decision threshold);
- ``golden.json``: inputs with the outputs that training-time PyTorch produced: random
  holdout rows, and the edges (each feature at its minimum, maximum and high quantiles,
  each value of a flag, rows either side of the decision threshold), with a tolerance
  set from the numerical noise measured on them.

Everything is seeded and single-threaded so rebuilding gives byte-identical golden files.
This module needs the ``triton`` extra (torch); the services never import it.
"""

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from aios.profile import (
    DECISION_THRESHOLD,
    FEATURES,
    INPUT_NAME,
    MODEL_NAME,
    OUTPUT_NAME,
    bin_index,
    build_sketch,
)
from aios_cli.claims import SEED, synthesize_claims

logger = logging.getLogger(__name__)

N_CLAIMS = 20_000
HOLDOUT_FRACTION = 0.2
N_BINS = 10
# Golden rows: this many random holdout rows, then the edge and threshold rows; 64 in
# all, the model's max_batch_size, so that the replay is one request.
GOLDEN_RANDOM = 32
# The golden tolerance: this many times the largest difference measured between ways of
# running the same module on the golden rows (one at a time, in odd batches, all at
# once), and never below GOLDEN_FLOOR (loadtests/README.md, "Golden parity").
NOISE_FACTOR = 10
GOLDEN_FLOOR = 1e-6
# The high quantiles each feature's golden edge rows take.
EDGE_QUANTILES = (0.99, 0.999)


class ClaimsRiskModel(nn.Module):
    """Standardise the selected features, then score: sigmoid(net(z))."""

    # Real annotations (no postponed evaluation here): TorchScript reads them.
    cols: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, cols: list[int], mean: NDArray[Any], std: NDArray[Any], net: nn.Module,
                 log_amount: bool) -> None:
        super().__init__()
        self.register_buffer("cols", torch.tensor(cols, dtype=torch.long))
        self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
        self.register_buffer("std", torch.from_numpy(std.astype(np.float32)))
        self.net = net
        self.log_amount = log_amount

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log_amount:
            x = torch.cat([torch.log1p(x[:, :1]), x[:, 1:]], dim=1)
        z = (x.index_select(1, self.cols) - self.mean) / self.std
        return torch.sigmoid(self.net(z))


@dataclass(frozen=True)
class VersionSpec:
    """How one version of the model is built."""

    version: int
    cols: tuple[int, ...]
    log_amount: bool
    hidden: int  # 0: logistic regression
    epochs: int
    lr: float
    description: str


VERSIONS = (
    VersionSpec(1, (0, 1, 2, 3, 4, 5), False, 0, 400, 0.05,
                "logistic regression on six raw features"),
    VersionSpec(2, (0, 1, 2, 3, 4, 5, 6, 7), True, 16, 600, 0.02,
                "MLP (16 hidden) on all eight features, log claim amount"),
)


def _transform(x: NDArray[Any], spec: VersionSpec) -> NDArray[Any]:
    x = x.astype(np.float64)
    if spec.log_amount:
        x = x.copy()
        x[:, 0] = np.log1p(x[:, 0])
    return x[:, list(spec.cols)]


def _train(spec: VersionSpec, x: NDArray[Any], y: NDArray[Any]) -> ClaimsRiskModel:
    torch.manual_seed(SEED + spec.version)
    xt = _transform(x, spec)
    mean, std = xt.mean(axis=0), xt.std(axis=0)
    std[std == 0] = 1.0
    width = len(spec.cols)
    net: nn.Module
    if spec.hidden:
        net = nn.Sequential(nn.Linear(width, spec.hidden), nn.Tanh(), nn.Linear(spec.hidden, 1))
    else:
        net = nn.Linear(width, 1)
    model = ClaimsRiskModel(list(spec.cols), mean, std, net, spec.log_amount)
    inputs, target = torch.from_numpy(x), torch.from_numpy(y).unsqueeze(1)
    optimiser = torch.optim.Adam(model.parameters(), lr=spec.lr)
    loss_fn = nn.BCELoss()
    for _ in range(spec.epochs):
        optimiser.zero_grad()
        loss = loss_fn(model(inputs), target)
        loss.backward()
        optimiser.step()
    return model.eval()


def _auc(score: NDArray[Any], label: NDArray[Any]) -> float:
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    pos = label == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _logloss(score: NDArray[Any], label: NDArray[Any]) -> float:
    p = np.clip(score.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(label * np.log(p) + (1 - label) * np.log(1 - p)))


def _column_profile(values: NDArray[Any]) -> dict[str, Any]:
    values = values.astype(np.float64)
    qs = np.quantile(values, np.linspace(0, 1, N_BINS + 1)[1:-1])
    edges = np.unique(np.round(qs, 6))
    counts = np.bincount(bin_index(edges.tolist(), values), minlength=len(edges) + 1)
    return {
        "dtype": "FP32",
        "min": round(float(values.min()), 6),
        "max": round(float(values.max()), 6),
        "mean": round(float(values.mean()), 6),
        "std": round(float(values.std()), 6),
        "bin_edges": [float(e) for e in edges],
        "frequencies": [round(float(c) / len(values), 6) for c in counts],
        "sketch": build_sketch(values).to_json(),
    }


def _score_correlation(x: NDArray[Any]) -> list[list[float]]:
    """The correlation of the features' normal scores over the training rows."""
    scores = np.column_stack([build_sketch(x[:, j]).normal_scores(x[:, j])
                              for j in range(x.shape[1])])
    return [[round(float(v), 6) for v in r] for r in np.corrcoef(scores, rowvar=False)]


def _edge_rows(x_train: NDArray[Any], base: NDArray[Any]) -> NDArray[Any]:
    """``base`` with one feature at a time set to each of its edges in training: the
    minimum, the maximum, the EDGE_QUANTILES, and every value of a 0/1 flag."""
    rows = []
    for j in range(x_train.shape[1]):
        column = x_train[:, j].astype(np.float64)
        values = sorted(set(column.tolist())) if set(column.tolist()) <= {0.0, 1.0} else [
            float(column.min()), float(column.max()),
            *(float(q) for q in np.quantile(column, EDGE_QUANTILES))]
        for value in values:
            row = base.copy()
            row[j] = value
            rows.append(row)
    return np.asarray(rows, dtype=np.float32)


def _threshold_rows(scripted: Any, x: NDArray[Any]) -> NDArray[Any]:
    """Rows just either side of the decision threshold: on the line from the lowest- to
    the highest-scoring row, a thousandth and a hundredth of it either side of the
    crossing found by bisection."""
    scores = _score(scripted, x)
    low, high = x[int(scores.argmin())].astype(np.float64), x[int(scores.argmax())]
    if not scores.min() < DECISION_THRESHOLD < scores.max():
        return np.zeros((0, x.shape[1]), dtype=np.float32)
    a, b = 0.0, 1.0
    for _ in range(40):
        mid = (a + b) / 2
        point = (low + mid * (high - low)).astype(np.float32)[None, :]
        a, b = (mid, b) if _score(scripted, point)[0] < DECISION_THRESHOLD else (a, mid)
    return np.asarray([low + t * (high - low) for t in (a - 0.01, a - 0.001, b + 0.001,
                                                         b + 0.01)], dtype=np.float32)


def _noise(scripted: Any, x: NDArray[Any]) -> float:
    """The largest difference between running ``x`` through the module all at once, a
    row at a time, and in batches of 7: how much the same model's answers move with
    how Triton happens to batch them."""
    whole = scripted(torch.from_numpy(x)).detach().numpy()
    single = np.concatenate([scripted(torch.from_numpy(x[i:i + 1])).detach().numpy()
                             for i in range(len(x))])
    odd = np.concatenate([scripted(torch.from_numpy(x[i:i + 7])).detach().numpy()
                          for i in range(0, len(x), 7)])
    return float(max(np.abs(whole - single).max(), np.abs(whole - odd).max()))


def _dump(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def _score(model: Callable[[torch.Tensor], torch.Tensor], x: NDArray[Any]) -> NDArray[Any]:
    """The model's (or its scripted module's) score of each row of ``x``."""
    with torch.no_grad():
        scores: NDArray[Any] = model(torch.from_numpy(np.ascontiguousarray(x))).numpy()[:, 0]
    return scores


def build(repo: Path) -> dict[int, dict[str, float]]:
    """Train both versions into ``repo/claims_risk/<v>/``; return holdout metrics."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x, y = synthesize_claims(N_CLAIMS)
    n_train = int(N_CLAIMS * (1 - HOLDOUT_FRACTION))
    x_train, y_train, x_hold, y_hold = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    random_x = x_hold[:GOLDEN_RANDOM]
    report: dict[int, dict[str, float]] = {}
    for spec in VERSIONS:
        model = _train(spec, x_train, y_train)
        out_dir = repo / MODEL_NAME / str(spec.version)
        out_dir.mkdir(parents=True, exist_ok=True)
        scripted = torch.jit.script(model)
        scripted.save(str(out_dir / "model.pt"))
        hold_score = _score(model, x_hold)
        metrics = {
            "holdout_auc": round(_auc(hold_score, y_hold), 6),
            "holdout_logloss": round(_logloss(hold_score, y_hold), 6),
        }
        report[spec.version] = metrics
        train_score = _score(model, x_train)
        features = [
            {"name": f.name, "index": i, "unit": f.unit, "description": f.description,
             "used": i in spec.cols, **_column_profile(x_train[:, i])}
            for i, f in enumerate(FEATURES)
        ]
        _dump(out_dir / "profile.json", {
            "model": MODEL_NAME, "version": spec.version, "description": spec.description,
            "input": INPUT_NAME, "output": OUTPUT_NAME, "n_train": n_train, "seed": SEED,
            "features": features, "output_profile": {"name": OUTPUT_NAME,
                                                     **_column_profile(train_score)},
            "score_correlation": _score_correlation(x_train),
            "decision_threshold": DECISION_THRESHOLD,
            "metrics": metrics,
        })
        # The golden outputs come from the scripted module, as Triton will run it.
        golden_x = np.concatenate([random_x, _edge_rows(x_train, random_x[0]),
                                   _threshold_rows(scripted, x_hold)])
        golden_y = scripted(torch.from_numpy(golden_x)).detach().numpy()
        noise = _noise(scripted, golden_x)
        _dump(out_dir / "golden.json", {
            "model": MODEL_NAME, "version": spec.version, "input": INPUT_NAME,
            "output": OUTPUT_NAME, "measured_noise": noise,
            "tolerance": max(GOLDEN_FLOOR, NOISE_FACTOR * noise),
            "inputs": [[float(v) for v in row] for row in golden_x],
            "outputs": [[float(v) for v in row] for row in golden_y],
        })
        logger.info("built %s v%d: %s", MODEL_NAME, spec.version, metrics)
    return report
