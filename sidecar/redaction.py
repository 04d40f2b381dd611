"""Per-feature redaction of decision records (`decision_log.feature_redaction`).

The rules name features by the profile's names; at start they become column indices of
each version's input tensor. A version of a model with rules but without a profile that
names those features has its inputs dropped whole: a column that cannot be found is
never kept by accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aios.config import ConfigError, DecisionLogSettings
from aios.readable import Names
from sidecar.records import ColumnRules

MIN_KEY_BYTES = 32


@dataclass(frozen=True)
class FeatureRedaction:
    """The column rules of every (model, version) the profiles name."""

    columns: Mapping[tuple[str, str], tuple[str, ColumnRules]]
    models: frozenset[str]

    def lookup(self, model: str, version: str) -> tuple[str, ColumnRules] | None:
        """The input tensor's name and its column rules, if any."""
        return self.columns.get((model, version))

    def drops_inputs(self, model: str, version: str) -> bool:
        """Whether a call's inputs must be dropped whole (rules, but no profile for them)."""
        return model in self.models and (model, version) not in self.columns


NONE = FeatureRedaction({}, frozenset())


def read_key(path: Path | None) -> bytes:
    """The redaction key (ConfigError naming the field if it cannot be used)."""
    if path is None:
        return b""
    where = "sidecar.decision_log.redaction_key_file"
    try:
        key = path.read_bytes()  # every byte, as written: a key is not text
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path} ({exc.strerror})") from exc
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{where}: {path} holds {len(key)} bytes; at least {MIN_KEY_BYTES}")
    return key


def build(settings: DecisionLogSettings, names: Mapping[tuple[str, str], Names],
          key: bytes) -> FeatureRedaction:
    """The rules in force; ConfigError for a feature no profile of its model names."""
    if not settings.feature_redaction:
        return NONE
    columns: dict[tuple[str, str], tuple[str, ColumnRules]] = {}
    for model, rules in settings.feature_redaction.items():
        versions = {v: n for (m, v), n in names.items() if m == model}
        known = {f for n in versions.values() for f, _ in n.features}
        for feature in rules:
            if feature not in known:
                raise ConfigError(
                    f"sidecar.decision_log.feature_redaction.{model}.{feature}: no profile "
                    f"of {model!r} has that feature (known: {', '.join(sorted(known)) or '-'})")
        for version, meaning in versions.items():
            index = {f: i for i, (f, _) in enumerate(meaning.features)}
            ruled = {index[f]: (f, rule) for f, rule in rules.items() if f in index}
            columns[(model, version)] = (meaning.input, ColumnRules(ruled, key))
    return FeatureRedaction(columns, frozenset(settings.feature_redaction))
