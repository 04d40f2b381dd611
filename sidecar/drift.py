"""Drift detection with stated error rates: pure statistics and the per-version monitor
that runs them (no I/O; `sidecar.parity` reports what it finds).

Over a sliding window of served rows, every `every` rows, each column (the features and
the output) gets a test with a null distribution against its training sketch
(`aios.profile.Sketch`): a one-sample Kolmogorov-Smirnov test against the training CDF
for continuous columns (its p-value from the Kolmogorov distribution, with the training
sample's size in the effective n), a chi-squared test of the per-value shares for
discrete and binary ones. The joint test compares the window's correlations of normal
scores with training's (Fisher z per pair): a shift of how features go together that
leaves each one's distribution alone. The output also has its decision rate at the
model's threshold tested (binomial). All p-values are Bonferroni-corrected over the
tests of one evaluation.

Besides, every row feeds a two-sided CUSUM per column on its standardized normal score:
a small persistent shift adds up to an alarm long before a window test sees it, and a
slow ramp cannot hide under a threshold. Its allowance `k` and alarm level `h` are set
by simulation (`python -m loadtests.drift_bench --calibrate`) for a stated false-alarm
rate per run length.

A flag is raised when a test or the CUSUM fires and cleared only after `clear_after`
clean evaluations in a row, so it does not flicker; it carries its evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from aios.profile import Sketch

JOINT = "joint"
DECISION_RATE = "decision_rate"
# Rows staged before they are scored and added: one-row requests share the numpy work.
STAGE_ROWS = 64
# A chi-squared cell holds at least this many expected rows (smaller ones are merged).
MIN_EXPECTED = 5.0


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution."""
    if lam < 0.2:
        return 1.0
    total = 0.0
    for k in range(1, 101):
        total += (1.0 if k % 2 else -1.0) * math.exp(-2.0 * k * k * lam * lam)
    return min(1.0, max(0.0, 2.0 * total))


def ks_test(sketch: Sketch, values: NDArray[np.float64]) -> tuple[float, float]:
    """(D, p) of the one-sample KS test of ``values`` against the training CDF; the
    training sample's own noise enters through the effective n (two-sample form)."""
    x = np.sort(values)
    n, m = len(x), sketch.n
    f = sketch.cdf_at(x)
    i = np.arange(1, n + 1, dtype=np.float64)
    d = float(max((i / n - f).max(), (f - (i - 1) / n).max()))
    n_eff = n * m / (n + m)
    lam = (math.sqrt(n_eff) + 0.12 + 0.11 / math.sqrt(n_eff)) * d
    return d, kolmogorov_sf(lam)


def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for a chi-squared variable with ``dof`` degrees of freedom (the regularized
    upper incomplete gamma function: series below a + 1, continued fraction above)."""
    if x <= 0:
        return 1.0
    a, y = dof / 2.0, x / 2.0
    log_front = -y + a * math.log(y) - math.lgamma(a)
    if y < a + 1.0:
        term = total = 1.0 / a
        k = a
        for _ in range(1000):
            k += 1.0
            term *= y / k
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b = y + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_front) * h)


def chi2_test(sketch: Sketch, values: NDArray[np.float64]) -> tuple[float, float]:
    """(statistic, p) of the chi-squared test of ``values``' per-value shares against
    training's; cells with few expected rows merged into their neighbours; a value
    training never had counts with its nearest lower knot."""
    n, m = len(values), sketch.n
    observed = np.bincount(sketch.knots(values), minlength=len(sketch.support)).astype(
        np.float64)
    expected = sketch.probabilities() * n
    cells_o: list[float] = []
    cells_e: list[float] = []
    acc_o = acc_e = 0.0
    for o, e in zip(observed, expected, strict=True):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= MIN_EXPECTED:
            cells_o.append(acc_o)
            cells_e.append(acc_e)
            acc_o = acc_e = 0.0
    if cells_e and acc_e:
        cells_o[-1] += acc_o
        cells_e[-1] += acc_e
    if len(cells_e) < 2:
        return 0.0, 1.0
    o_arr, e_arr = np.asarray(cells_o), np.asarray(cells_e)
    # The training shares are estimates too: the two-sample variance is (1 + n/m) times.
    stat = float(((o_arr - e_arr) ** 2 / e_arr).sum()) / (1.0 + n / m)
    return stat, chi2_sf(stat, len(cells_e) - 1)


def normal_sf2(z: float) -> float:
    """Two-sided P(|Z| > |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def correlation_test(scores: NDArray[np.float64], reference: NDArray[np.float64],
                     ) -> tuple[tuple[int, int], float, float]:
    """The pair of columns whose correlation (of normal scores) moved most from
    ``reference``: (pair, Fisher z statistic, Bonferroni p over all pairs)."""
    n, k = scores.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(scores, rowvar=False)
    r = np.nan_to_num(r, nan=0.0)
    upper = np.triu_indices(k, 1)
    clip = 1 - 1e-9
    z = (np.arctanh(np.clip(r[upper], -clip, clip)) -
         np.arctanh(np.clip(reference[upper], -clip, clip))) * math.sqrt(max(n - 3, 1))
    worst = int(np.abs(z).argmax())
    p = min(1.0, normal_sf2(float(z[worst])) * len(z))
    return (int(upper[0][worst]), int(upper[1][worst])), float(z[worst]), p


def rate_test(hits: int, n: int, expected: float) -> float:
    """Two-sided p of ``hits`` of ``n`` against a rate of ``expected`` (normal approx)."""
    if n == 0 or not 0 < expected < 1:
        return 1.0
    return normal_sf2((hits - n * expected) / math.sqrt(n * expected * (1 - expected)))


class Cusum:
    """Two-sided CUSUMs of standardized scores, one per column: S+ = max(0, S+ + z - k),
    S- = max(0, S- - z - k); alarm while either reaches ``h``. Between batches a level is
    capped at 1.5 h, so that after a shift ends it falls back under h within ~h/2k rows."""

    def __init__(self, columns: int, k: float, h: float) -> None:
        self.k, self.h = k, h
        self.up = np.zeros(columns)
        self.down = np.zeros(columns)

    def update(self, z: NDArray[np.float64]) -> NDArray[np.float64]:
        """Feed rows ``z`` [rows, columns]; the highest level each column reached."""
        peaks = np.zeros(z.shape[1])
        for side, steps in ((self.up, z - self.k), (self.down, -z - self.k)):
            # max(0, S + x) over a run is C - min(-S0, running min of C): no Python loop.
            c = np.cumsum(steps, axis=0)
            level = c - np.minimum(np.minimum.accumulate(c, axis=0), -side)
            peaks = np.maximum(peaks, level.max(axis=0))
            side[:] = np.minimum(level[-1], 1.5 * self.h)
        return peaks

    @property
    def levels(self) -> NDArray[np.float64]:
        out: NDArray[np.float64] = np.maximum(self.up, self.down)
        return out


@dataclass(frozen=True)
class Finding:
    """One column's (or the joint test's) state after an evaluation."""

    name: str
    flagged: bool
    test: str  # ks | chi2 | cusum | joint | rate: what fired (or the column's test)
    statistic: float  # D, chi-squared, the CUSUM level, Fisher z, or the window's rate
    p_value: float  # Bonferroni-corrected (1.0 for the CUSUM)
    cusum: float  # the column's highest CUSUM level since the last evaluation
    detail: str = ""  # the joint test's pair; the decision rate's threshold

    @property
    def evidence(self) -> str:
        """What a flag says in a record and a log line."""
        if self.test == "cusum":
            return f"cusum {self.cusum:.1f}"
        if self.test == JOINT:
            return f"{self.detail} z={self.statistic:+.1f} p={self.p_value:.1g}"
        if self.test == "rate":
            return f"rate {self.statistic:.3f} {self.detail} p={self.p_value:.1g}"
        return f"{self.test} {self.statistic:.3g} p={self.p_value:.1g}"


@dataclass(frozen=True)
class MonitorSettings:
    """`aios.config.ParitySettings`' drift fields, as the monitor reads them."""

    window: int
    every: int
    alpha: float  # per evaluation, over all its tests
    cusum_k: float
    cusum_h: float
    clear_after: int


@dataclass
class _Flag:
    finding: Finding
    clean: int = 0


@dataclass
class Monitor:
    """One model version's drift state (see the module docstring)."""

    names: tuple[str, ...]  # the features, then the output
    sketches: tuple[Sketch, ...]
    correlation: NDArray[np.float64] | None  # training correlation of feature scores
    threshold: float | None  # the model's decision threshold on the output
    settings: MonitorSettings
    _values: NDArray[np.float64] = field(init=False)
    _scores: NDArray[np.float64] = field(init=False)  # the window's normal scores
    _expected_rate: float = field(init=False)  # training's share at/above the threshold
    _cusum: Cusum = field(init=False)
    _peaks: NDArray[np.float64] = field(init=False)
    _staged: list[NDArray[np.float64]] = field(default_factory=list)
    _staged_rows: int = 0
    _filled: int = 0
    _pos: int = 0
    since_eval: int = 0
    flags: dict[str, _Flag] = field(default_factory=dict)
    highest_cusum: float = 0.0  # the highest level any column's CUSUM has reached

    def __post_init__(self) -> None:
        width = len(self.names)
        self._values = np.zeros((self.settings.window, width))
        self._scores = np.zeros((self.settings.window, width))
        self._expected_rate = 0.0 if self.threshold is None else 1.0 - float(
            self.sketches[-1].cdf_at(np.asarray([self.threshold]))[0])
        self._cusum = Cusum(width, self.settings.cusum_k, self.settings.cusum_h)
        self._peaks = np.zeros(width)

    @property
    def full(self) -> bool:
        self.flush()
        return self._filled == len(self._values)

    def add(self, rows: NDArray[Any]) -> None:
        """Add served rows: feature values, then the output, one column each."""
        self._staged.append(np.asarray(rows, dtype=np.float64))
        self._staged_rows += len(rows)
        self.since_eval += len(rows)
        if self._staged_rows >= STAGE_ROWS:
            self.flush()

    def flush(self) -> None:
        """Score the staged rows into the CUSUMs and the window."""
        if not self._staged:
            return
        rows = self._staged[0] if len(self._staged) == 1 else np.concatenate(self._staged)
        self._staged, self._staged_rows = [], 0
        scores = np.column_stack([s.normal_scores(rows[:, j])
                                  for j, s in enumerate(self.sketches)])
        peaks = self._cusum.update(scores)
        self._peaks = np.maximum(self._peaks, peaks)
        self.highest_cusum = max(self.highest_cusum, float(peaks.max()))
        # A CUSUM alarm is raised at once, not at the next evaluation: it is the early one.
        for j in np.flatnonzero(peaks >= self.settings.cusum_h):
            name = self.names[j]
            if name not in self.flags:
                self.flags[name] = _Flag(Finding(name, True, "cusum", float(peaks[j]), 1.0,
                                                 float(peaks[j])))
        size = len(self._values)
        recent = rows[-size:]
        slots = (self._pos + np.arange(len(recent))) % size
        self._values[slots] = recent
        self._scores[slots] = scores[-size:]
        self._filled = min(size, self._filled + len(recent))
        self._pos = (self._pos + len(recent)) % size

    def window(self) -> NDArray[np.float64]:
        self.flush()
        return self._values[:self._filled]

    def evaluate(self) -> list[Finding]:
        """Test the window, judge the CUSUMs, and move the flags (see the docstring)."""
        window = self.window()
        self.since_eval = 0
        tests = len(self.names) + (self.correlation is not None) + (self.threshold is not None)
        alpha = self.settings.alpha
        findings = []
        for j, (name, sketch) in enumerate(zip(self.names, self.sketches, strict=True)):
            column = window[:, j]
            test = "ks" if sketch.kind == "continuous" else "chi2"
            stat, p = ks_test(sketch, column) if test == "ks" else chi2_test(sketch, column)
            p = min(1.0, p * tests)
            peak = float(self._peaks[j])
            fired = "cusum" if peak >= self.settings.cusum_h else test if p < alpha else ""
            findings.append(Finding(name, bool(fired), fired or test, stat, p, peak))
        if self.correlation is not None:
            width = self.correlation.shape[0]
            (a, b), z, p = correlation_test(self._scores[:self._filled, :width],
                                            self.correlation)
            p = min(1.0, p * tests)
            findings.append(Finding(JOINT, p < alpha, JOINT, z, p, 0.0,
                                    f"{self.names[a]}~{self.names[b]}"))
        if self.threshold is not None:
            output = window[:, len(self.names) - 1]
            expected = self._expected_rate
            hits = int((output >= self.threshold).sum())
            p = min(1.0, rate_test(hits, len(output), expected) * tests)
            findings.append(Finding(DECISION_RATE, p < alpha, "rate", hits / len(output), p,
                                    0.0, f"vs {expected:.3f} at >= {self.threshold:g}"))
        self._peaks = self._cusum.levels.copy()
        for finding in findings:
            self._judge(finding)
        return findings

    def _judge(self, finding: Finding) -> None:
        flag = self.flags.get(finding.name)
        if finding.flagged:
            self.flags[finding.name] = _Flag(finding)
        elif flag is not None:
            flag.clean += 1
            if flag.clean >= self.settings.clear_after:
                del self.flags[finding.name]
