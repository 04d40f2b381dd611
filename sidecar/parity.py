"""Feature parity and drift against each model version's training profile.

- Schema: each input checked against the profile (name, dtype, shape, NaN/inf, range);
  per model `observe` (flag and count) or `enforce` (422 naming the feature and bound).
- Drift: per version, the tests of `sidecar.drift` (a test with a stated error rate per
  feature and for the output, a joint test, the decision rate, a CUSUM per column) over
  the served rows; flags and their evidence in metrics, logs and the decision records.
  PSI over the profile's decile bins is reported beside them, as a familiar figure.
- Output parity: the golden set replayed through Triton; a mismatch beyond tolerance
  marks the version not ready and names the worst input.

`Parity` holds the monitors and the metrics.
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
from aios.profile import Sketch, bin_index, sketch_from_bins
from sidecar.drift import DECISION_RATE, JOINT, Finding, Monitor, MonitorSettings

logger = logging.getLogger(__name__)

PSI_EPSILON = 1e-4
# The training rows a profile that does not say is taken to stand for.
OLD_PROFILE_ROWS = 10_000


@dataclass(frozen=True)
class ColumnProfile:
    """One feature (or the output) as training saw it."""

    name: str
    minimum: float
    maximum: float
    edges: tuple[float, ...]
    frequencies: NDArray[np.float64]
    sketch: Sketch


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
    # The training correlation of the features' normal scores (the joint test), and the
    # model's decision threshold on its output (the decision-rate test); None in
    # profiles made before them.
    correlation: NDArray[np.float64] | None = None
    threshold: float | None = None
    # Per feature, as arrays: every request's inputs are checked against them at once.
    minimums: NDArray[np.float64] = field(init=False, repr=False, compare=False)
    maximums: NDArray[np.float64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "minimums",
                           np.asarray([f.minimum for f in self.features], dtype=np.float64))
        object.__setattr__(self, "maximums",
                           np.asarray([f.maximum for f in self.features], dtype=np.float64))


def _column(doc: Mapping[str, Any], n_train: int) -> ColumnProfile:
    edges = tuple(float(e) for e in doc["bin_edges"])
    frequencies = np.asarray(doc["frequencies"], dtype=np.float64)
    minimum, maximum = float(doc["min"]), float(doc["max"])
    sketch = Sketch.from_json(doc["sketch"]) if "sketch" in doc else \
        sketch_from_bins(minimum, edges, frequencies, n_train)
    return ColumnProfile(doc["name"], minimum, maximum, edges, frequencies, sketch)


def load_profiles(repo: Path) -> dict[tuple[str, str], VersionProfile]:
    """Every version in ``repo`` that has a profile.json (and golden.json) beside it."""
    profiles = {}
    for path in sorted(repo.glob("*/[0-9]*/profile.json")):
        doc = json.loads(path.read_text())
        golden = json.loads((path.parent / "golden.json").read_text())
        version = path.parent.name
        n_train = int(doc.get("n_train", OLD_PROFILE_ROWS))
        profiles[(doc["model"], version)] = VersionProfile(
            doc["model"], version, doc["input"], doc["output"],
            tuple(_column(f, n_train) for f in doc["features"]),
            _column(doc["output_profile"], n_train),
            np.asarray(golden["inputs"], dtype=np.float32),
            np.asarray(golden["outputs"], dtype=np.float32), float(golden["tolerance"]),
            np.asarray(doc["score_correlation"], dtype=np.float64)
            if "score_correlation" in doc else None,
            float(doc["decision_threshold"]) if "decision_threshold" in doc else None)
    return profiles


def psi(expected: NDArray[np.float64], counts: NDArray[np.int64]) -> float:
    """Population stability index of observed bin ``counts`` against ``expected`` shares."""
    actual = counts / max(int(counts.sum()), 1)
    e = np.clip(expected, PSI_EPSILON, None)
    a = np.clip(actual, PSI_EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


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


class ParityMetrics:
    """Schema violations, drift figures and golden-set parity, per model and version."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("model", "version", "feature")
        self.violations = Counter("aios_sidecar_schema_violations",
                                  "Inputs outside the training profile", (*labels, "check"),
                                  registry=registry)
        self.psi = Gauge("aios_sidecar_drift_psi", "PSI of the served window vs training",
                         labels, registry=registry)
        self.ks = Gauge("aios_sidecar_drift_ks", "KS statistic of the window vs training "
                        "(continuous columns)", labels, registry=registry)
        self.p_value = Gauge("aios_sidecar_drift_p_value", "Bonferroni p-value of the "
                             "column's window test (joint: the worst pair; decision_rate: "
                             "the rate at the threshold)", labels, registry=registry)
        self.cusum = Gauge("aios_sidecar_drift_cusum", "Highest CUSUM level of the "
                           "column's normal score since the last evaluation", labels,
                           registry=registry)
        self.drift = Gauge("aios_sidecar_drift_flag", "1 while a feature has drifted", labels,
                           registry=registry)
        self.parity_ok = Gauge("aios_sidecar_parity_ok",
                               "1 if the golden set replays within tolerance",
                               ("model", "version"), registry=registry)
        self.parity_diff = Gauge("aios_sidecar_parity_max_abs_diff",
                                 "Worst golden-set output difference", ("model", "version"),
                                 registry=registry)


class Parity:
    """Profiles, drift monitors and parity state of every served version."""

    def __init__(self, settings: ParitySettings, profiles: dict[tuple[str, str], VersionProfile],
                 registry: CollectorRegistry) -> None:
        self._settings = settings
        self._monitor_settings = MonitorSettings(
            settings.drift_window, settings.drift_every, settings.drift_alpha,
            settings.cusum_k, settings.cusum_h, settings.drift_clear_after)
        self.profiles = profiles
        self.metrics = ParityMetrics(registry)
        self._monitors: dict[tuple[str, str], Monitor] = {}
        self.golden_ok: dict[tuple[str, str], bool] = {}
        self._latest: dict[str, str] = {}
        for model, version in profiles:
            if int(version) > int(self._latest.get(model, "0")):
                self._latest[model] = version

    def profile(self, model: str, version: str) -> VersionProfile | None:
        """The profile of the version a call will reach ("" = the latest, Triton's default)."""
        return self.profiles.get((model, version or self._latest.get(model, "")))

    def check(self, profile: VersionProfile, tensors: Mapping[str, NDArray[Any]]) -> list[str]:
        """Schema flags for a request, and the version's drift flags with their evidence;
        in enforce mode, a schema violation refuses the request (422) instead."""
        violations = schema_violations(profile, tensors)
        for v in violations:
            check, _, feature = v.flag.partition(":")
            self.metrics.violations.labels(profile.model, profile.version, feature, check).inc()
        if violations and self._settings.mode.get(profile.model) == "enforce":
            raise Unprocessable(violations[0].message)
        flags = [v.flag for v in violations]
        monitor = self._monitors.get((profile.model, profile.version))
        if monitor is not None and monitor.flags:
            flags += [f"drift:{name} ({flag.finding.evidence})"
                      for name, flag in monitor.flags.items()]
        return flags

    def monitor(self, profile: VersionProfile) -> Monitor:
        """The version's drift monitor (made on first use)."""
        key = (profile.model, profile.version)
        monitor = self._monitors.get(key)
        if monitor is None:
            columns = (*profile.features, profile.output)
            monitor = self._monitors[key] = Monitor(
                tuple(c.name for c in columns), tuple(c.sketch for c in columns),
                profile.correlation, profile.threshold, self._monitor_settings)
        return monitor

    def observe(self, profile: VersionProfile, inputs: NDArray[Any],
                outputs: NDArray[Any] | None) -> None:
        """Add served rows (with their outputs) to the version's monitor; evaluate every
        `drift_every` rows once the window is full."""
        if inputs.ndim != 2 or inputs.shape[1] != len(profile.features) or outputs is None \
                or len(outputs) != len(inputs):
            return
        monitor = self.monitor(profile)
        monitor.add(np.column_stack([inputs, outputs.reshape(len(outputs), -1)[:, :1]]))
        if monitor.since_eval >= self._settings.drift_every and monitor.full:
            before = set(monitor.flags)
            self._report(profile, monitor, monitor.evaluate(), before)

    def _report(self, profile: VersionProfile, monitor: Monitor, findings: list[Finding],
                before: set[str]) -> None:
        window = monitor.window()
        columns = (*profile.features, profile.output)
        for j, column in enumerate(columns):
            labels = (profile.model, profile.version, column.name)
            counts = np.bincount(bin_index(column.edges, window[:, j]),
                                 minlength=len(column.edges) + 1)
            self.metrics.psi.labels(*labels).set(psi(column.frequencies, counts))
            if column.sketch.kind == "continuous":
                self.metrics.ks.labels(*labels).set(findings[j].statistic)
        for finding in findings:
            labels = (profile.model, profile.version, finding.name)
            self.metrics.p_value.labels(*labels).set(finding.p_value)
            self.metrics.cusum.labels(*labels).set(finding.cusum)
            raised = finding.name in monitor.flags
            self.metrics.drift.labels(*labels).set(1 if raised else 0)
            if raised and finding.name not in before:
                logger.warning("drift: %s v%s '%s' (%s)", profile.model, profile.version,
                               finding.name, monitor.flags[finding.name].finding.evidence)

    def drifted(self, model: str, version: str) -> list[str]:
        """What of a version is flagged as drifted now: features, the output, `joint`,
        `decision_rate`, in that order."""
        profile = self.profiles[(model, version)]
        monitor = self._monitors.get((model, version))
        if monitor is None:
            return []
        names = [*(c.name for c in (*profile.features, profile.output)), JOINT, DECISION_RATE]
        return [n for n in names if n in monitor.flags]

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
