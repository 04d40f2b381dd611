"""Feature parity and drift against each model version's training profile.

- Schema: each input checked against the profile (name, dtype, shape, NaN/inf, range);
  per model `observe` (flag and count) or `enforce` (422 naming the feature and bound).
- Drift: per feature, a sliding window of served values binned with the training
  quantile edges; PSI and a KS statistic against the training frequencies every N rows,
  a flag when either is over its threshold. The same for the model's output. (A
  feature with few distinct values, such as a 0/1 flag, has few bins: a shift that stays
  within a bin cannot show.)
- Output parity: the golden set replayed through Triton; a mismatch beyond tolerance
  marks the version not ready and names the worst input.

The statistics are pure functions; `Parity` holds the windows and the metrics.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, Counter, Gauge

from aios.config import ParitySettings
from aios.errors import Unprocessable
from aios.profile import bin_index

logger = logging.getLogger(__name__)

PSI_EPSILON = 1e-4


@dataclass(frozen=True)
class ColumnProfile:
    """One feature (or the output) as training saw it."""

    name: str
    minimum: float
    maximum: float
    edges: tuple[float, ...]
    frequencies: NDArray[np.float64]


@dataclass(frozen=True)
class VersionProfile:
    """A model version's training profile and golden set."""

    model: str
    version: str
    input_name: str
    output_name: str
    features: tuple[ColumnProfile, ...]
    output: ColumnProfile
    golden_inputs: NDArray[np.float32]
    golden_outputs: NDArray[np.float32]
    tolerance: float
    # Per feature, as arrays: every request's inputs are checked against them at once.
    minimums: NDArray[np.float64] = field(init=False, repr=False, compare=False)
    maximums: NDArray[np.float64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "minimums",
                           np.asarray([f.minimum for f in self.features], dtype=np.float64))
        object.__setattr__(self, "maximums",
                           np.asarray([f.maximum for f in self.features], dtype=np.float64))


def _column(doc: Mapping[str, Any]) -> ColumnProfile:
    return ColumnProfile(doc["name"], float(doc["min"]), float(doc["max"]),
                         tuple(doc["bin_edges"]), np.asarray(doc["frequencies"], dtype=np.float64))


def load_profiles(repo: Path) -> dict[tuple[str, str], VersionProfile]:
    """Every version in ``repo`` that has a profile.json (and golden.json) beside it."""
    profiles = {}
    for path in sorted(repo.glob("*/[0-9]*/profile.json")):
        doc = json.loads(path.read_text())
        golden = json.loads((path.parent / "golden.json").read_text())
        version = path.parent.name
        profiles[(doc["model"], version)] = VersionProfile(
            doc["model"], version, doc["input"], doc["output"],
            tuple(_column(f) for f in doc["features"]), _column(doc["output_profile"]),
            np.asarray(golden["inputs"], dtype=np.float32),
            np.asarray(golden["outputs"], dtype=np.float32), float(golden["tolerance"]))
    return profiles


def psi(expected: NDArray[np.float64], counts: NDArray[np.int64]) -> float:
    """Population stability index of observed bin ``counts`` against ``expected`` shares."""
    actual = counts / max(int(counts.sum()), 1)
    e = np.clip(expected, PSI_EPSILON, None)
    a = np.clip(actual, PSI_EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def ks(expected: NDArray[np.float64], counts: NDArray[np.int64]) -> float:
    """Kolmogorov-Smirnov statistic between the binned distributions."""
    actual = counts / max(int(counts.sum()), 1)
    return float(np.max(np.abs(np.cumsum(actual) - np.cumsum(expected))))


@dataclass(frozen=True)
class Violation:
    """A schema check that failed: a flag for the record, and what to tell the client."""

    flag: str
    message: str


def schema_violations(profile: VersionProfile, tensors: Mapping[str, NDArray[Any]],
                      ) -> list[Violation]:
    """Check the request's inputs against the profile; every failure, first most telling."""
    name = profile.input_name
    x = tensors.get(name)
    if x is None:
        return [Violation(f"missing_input:{name}", f"input '{name}' is missing")]
    width = len(profile.features)
    if x.dtype != np.float32:
        return [Violation(f"dtype:{name}", f"input '{name}' must be FP32, got {x.dtype}")]
    if x.ndim != 2 or x.shape[1] != width:
        return [Violation(f"shape:{name}", f"input '{name}' must have shape [-1, {width}], "
                                           f"got {list(x.shape)}")]
    # The usual case in two comparisons: NaN fails both, so a pass also means finite.
    if (np.greater_equal(x, profile.minimums) & np.less_equal(x, profile.maximums)).all():
        return []
    # One pass per check over the whole batch; only failing columns are looked at again.
    finite = np.isfinite(x).all(axis=0)
    lows = x.min(axis=0, initial=math.inf)
    highs = x.max(axis=0, initial=-math.inf)
    failing = ~finite | (lows < profile.minimums) | (highs > profile.maximums)
    out = []
    for i in np.flatnonzero(failing):
        feature = profile.features[i]
        if not finite[i]:
            out.append(Violation(f"nonfinite:{feature.name}",
                                 f"feature '{feature.name}' has NaN or infinite values"))
            continue
        low, high = float(lows[i]), float(highs[i])
        if low < feature.minimum:
            out.append(Violation(f"out_of_range:{feature.name}",
                                 f"feature '{feature.name}' = {low:g} is below the training "
                                 f"minimum {feature.minimum:g}"))
        elif high > feature.maximum:
            out.append(Violation(f"out_of_range:{feature.name}",
                                 f"feature '{feature.name}' = {high:g} is above the training "
                                 f"maximum {feature.maximum:g}"))
    return out


class Window:
    """The last ``size`` rows' bin indices per column, with counts kept up to date.

    Rows are staged and binned in chunks: a request of one row costs a list append, and
    the numpy work is shared by `STAGE_ROWS` rows. Counts and `full` see staged rows too.
    """

    STAGE_ROWS = 64

    def __init__(self, columns: tuple[ColumnProfile, ...], size: int) -> None:
        self.columns = columns
        self._edges = [np.asarray(c.edges, dtype=np.float64) for c in columns]
        # All columns' counts in one array: column j's bins start at _offsets[j].
        widths = [len(c.edges) + 1 for c in columns]
        self._offsets = np.cumsum([0, *widths[:-1]]).astype(np.int64)
        self._counts = np.zeros(sum(widths), dtype=np.int64)
        self._bounds = [(int(o), int(o) + w) for o, w in zip(self._offsets, widths, strict=True)]
        self._bins = np.zeros((size, len(columns)), dtype=np.int64)
        self._filled = 0
        self._pos = 0
        self._staged: list[NDArray[Any]] = []
        self._staged_rows = 0
        self.since_eval = 0

    @property
    def full(self) -> bool:
        """Whether the window holds ``size`` rows."""
        self.flush()
        return self._filled == len(self._bins)

    def add(self, rows: NDArray[Any]) -> None:
        """Add rows (one value per column each), evicting the oldest."""
        self._staged.append(rows)
        self._staged_rows += len(rows)
        self.since_eval += len(rows)
        if self._staged_rows >= self.STAGE_ROWS:
            self.flush()

    def flush(self) -> None:
        """Bin the staged rows into the window."""
        if not self._staged:
            return
        rows = self._staged[0] if len(self._staged) == 1 else np.concatenate(self._staged)
        self._staged, self._staged_rows = [], 0
        size = len(self._bins)
        recent = rows[-size:]
        binned = np.empty((len(recent), len(self._edges)), dtype=np.int64)
        for j, edges in enumerate(self._edges):
            binned[:, j] = bin_index(edges, recent[:, j])
        slots = (self._pos + np.arange(len(recent))) % size
        # Slots below _filled hold rows (the ring fills from 0): those rows leave.
        evicted = self._bins[slots[slots < self._filled]]
        if len(evicted):
            self._counts -= np.bincount((evicted + self._offsets).ravel(),
                                        minlength=len(self._counts))
        self._bins[slots] = binned
        self._counts += np.bincount((binned + self._offsets).ravel(),
                                    minlength=len(self._counts))
        self._filled = min(size, self._filled + len(recent))
        self._pos = (self._pos + len(recent)) % size

    def counts(self, column: int) -> NDArray[np.int64]:
        """Current bin counts of one column."""
        self.flush()
        start, end = self._bounds[column]
        return self._counts[start:end]


class ParityMetrics:
    """Schema violations, drift figures and golden-set parity, per model and version."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("model", "version", "feature")
        self.violations = Counter("aios_sidecar_schema_violations",
                                  "Inputs outside the training profile", (*labels, "check"),
                                  registry=registry)
        self.psi = Gauge("aios_sidecar_drift_psi", "PSI of the served window vs training",
                         labels, registry=registry)
        self.ks = Gauge("aios_sidecar_drift_ks", "KS statistic of the window vs training",
                        labels, registry=registry)
        self.drift = Gauge("aios_sidecar_drift_flag", "1 while a feature has drifted", labels,
                           registry=registry)
        self.parity_ok = Gauge("aios_sidecar_parity_ok",
                               "1 if the golden set replays within tolerance",
                               ("model", "version"), registry=registry)
        self.parity_diff = Gauge("aios_sidecar_parity_max_abs_diff",
                                 "Worst golden-set output difference", ("model", "version"),
                                 registry=registry)


class Parity:
    """Profiles, drift windows and parity state of every served version."""

    def __init__(self, settings: ParitySettings, profiles: dict[tuple[str, str], VersionProfile],
                 registry: CollectorRegistry) -> None:
        self._settings = settings
        self.profiles = profiles
        self.metrics = ParityMetrics(registry)
        self._windows: dict[tuple[str, str], tuple[Window, Window]] = {}
        self.golden_ok: dict[tuple[str, str], bool] = {}
        self._drifted: set[tuple[str, str, str]] = set()
        self._latest: dict[str, str] = {}
        for model, version in profiles:
            if int(version) > int(self._latest.get(model, "0")):
                self._latest[model] = version

    def profile(self, model: str, version: str) -> VersionProfile | None:
        """The profile of the version a call will reach ("" = the latest, Triton's default)."""
        return self.profiles.get((model, version or self._latest.get(model, "")))

    def check(self, profile: VersionProfile, tensors: Mapping[str, NDArray[Any]]) -> list[str]:
        """Schema flags for a request; in enforce mode, refuse it (422) instead."""
        violations = schema_violations(profile, tensors)
        for v in violations:
            check, _, feature = v.flag.partition(":")
            self.metrics.violations.labels(profile.model, profile.version, feature, check).inc()
        if violations and self._settings.mode.get(profile.model) == "enforce":
            raise Unprocessable(violations[0].message)
        return [v.flag for v in violations]

    def observe(self, profile: VersionProfile, inputs: NDArray[Any],
                outputs: NDArray[Any] | None) -> None:
        """Add served rows to the drift windows; re-evaluate every `drift_every` rows."""
        key = (profile.model, profile.version)
        windows = self._windows.get(key)
        if windows is None:
            size = self._settings.drift_window
            windows = self._windows[key] = (Window(profile.features, size),
                                            Window((profile.output,), size))
        if inputs.ndim != 2 or inputs.shape[1] != len(profile.features):
            return
        windows[0].add(inputs)
        if outputs is not None and len(outputs) == len(inputs):
            windows[1].add(outputs.reshape(len(outputs), -1)[:, :1])
        for window in windows:
            if window.since_eval >= self._settings.drift_every and window.full:
                window.since_eval = 0
                self._evaluate(profile, window)

    def _evaluate(self, profile: VersionProfile, window: Window) -> None:
        for i, column in enumerate(window.columns):
            counts = window.counts(i)
            value_psi = psi(column.frequencies, counts)
            value_ks = ks(column.frequencies, counts)
            labels = (profile.model, profile.version, column.name)
            self.metrics.psi.labels(*labels).set(value_psi)
            self.metrics.ks.labels(*labels).set(value_ks)
            drifted = (value_psi > self._settings.psi_threshold
                       or value_ks > self._settings.ks_threshold)
            was = labels in self._drifted
            self.metrics.drift.labels(*labels).set(1 if drifted else 0)
            if drifted:
                self._drifted.add(labels)
            else:
                self._drifted.discard(labels)
            if drifted and not was:
                logger.warning("drift: %s v%s feature '%s' PSI %.3f (threshold %.2f), "
                               "KS %.3f (threshold %.2f)", profile.model, profile.version,
                               column.name, value_psi, self._settings.psi_threshold, value_ks,
                               self._settings.ks_threshold)

    def drifted(self, model: str, version: str) -> list[str]:
        """Features (or the output) of a version flagged as drifted now."""
        profile = self.profiles[(model, version)]
        return [c.name for c in (*profile.features, profile.output)
                if (model, version, c.name) in self._drifted]

    def record_golden(self, profile: VersionProfile, outputs: NDArray[Any] | None,
                      error: str = "") -> bool:
        """Judge one golden replay; log the worst input when it fails."""
        key = (profile.model, profile.version)
        if outputs is None or outputs.shape != profile.golden_outputs.shape:
            ok, worst, diff = False, -1, math.inf
        else:
            diffs = np.abs(outputs.astype(np.float64) - profile.golden_outputs).max(axis=1)
            worst, diff = int(diffs.argmax()), float(diffs.max())
            ok = diff <= profile.tolerance
        self.golden_ok[key] = ok
        self.metrics.parity_ok.labels(*key).set(1 if ok else 0)
        self.metrics.parity_diff.labels(*key).set(diff)
        if not ok:
            logger.error("parity: %s v%s does not reproduce its golden set (%s); worst input "
                         "#%d off by %g (tolerance %g): %s", profile.model, profile.version,
                         error or "outputs differ", worst, diff, profile.tolerance,
                         profile.golden_inputs[worst].tolist() if worst >= 0 else "-")
        return ok
