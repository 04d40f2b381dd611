"""Per-feature redaction: rules by the profile's names, keyed digests, fail closed."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from aios.config import ConfigError, DecisionLogSettings
from aios.readable import load_names, readable
from proto.decision_record_pb2 import DecisionRecord
from sidecar.records import ColumnRules, add_tensor
from sidecar.redaction import build, read_key
from tests.helpers import MODEL_REPO

KEY = b"k" * 32
CLAIM = [5255.7, 46.0, 1.0, 14.0, 61.8125, 5.6, 1.0, 0.0]  # claimant_age is column 4


def test_a_hashed_column_is_zeroed_and_keeps_only_its_keyed_digest() -> None:
    record = DecisionRecord()
    x = np.asarray([CLAIM, CLAIM], np.float32)
    add_tensor(record.inputs, "features", x, "keep",
               ColumnRules({4: ("claimant_age", "hash"), 7: ("witness_present", "drop")}, KEY))
    [tensor] = record.inputs
    stored = np.frombuffer(tensor.contents, "<f4").reshape(2, 8)
    assert (stored[:, 4] == 0).all() and (stored[:, 7] == 0).all()
    np.testing.assert_array_equal(stored[:, :4], x[:, :4])
    assert np.float32(61.8125).tobytes() not in tensor.contents
    assert tensor.sha256 == hashlib.sha256(tensor.contents).digest(), "of what is stored"
    age, witness = tensor.columns
    assert (age.index, age.name, age.redaction) == (4, "claimant_age", "hash")
    assert age.digest == hmac.new(KEY, b"claimant_age\0" + x[:, 4].tobytes(),
                                  "sha256").digest()
    assert (witness.redaction, witness.digest) == ("drop", b"")
    doc = readable(record, load_names(MODEL_REPO))
    assert doc["inputs"][0]["redacted_columns"] == [
        {"name": "claimant_age", "redaction": "hash"},
        {"name": "witness_present", "redaction": "drop"}]


def rules(**decision_log: object) -> DecisionLogSettings:
    return DecisionLogSettings.model_validate({"directory": "/tmp/x/log", **decision_log})


def test_rules_become_columns_of_every_version_named_by_its_profile() -> None:
    settings = rules(feature_redaction={"claims_risk": {"claimant_age": "hash"}},
                     redaction_key_file="/tmp/x/key")
    features = build(settings, load_names(MODEL_REPO), KEY)
    for version in ("1", "2"):
        lookup = features.lookup("claims_risk", version)
        assert lookup is not None
        assert lookup[0] == "features" and dict(lookup[1].columns) == {
            4: ("claimant_age", "hash")}
    assert features.drops_inputs("claims_risk", "9"), "no profile: nothing kept by chance"
    assert not features.drops_inputs("other", "1")


@pytest.mark.parametrize(("decision_log", "message"), [
    ({"feature_redaction": {"claims_risk": {"claimant_age": "hash"}}},
     "feature_redaction 'hash' needs redaction_key_file"),
    ({"feature_redaction": {"claims_risk": {"claimant_age": "keep"}}}, "Input should be"),
    ({"redaction_key_file": "/tmp/x/log/key"}, "redaction_key_file must be outside the log"),
])
def test_unsafe_rules_are_refused_naming_the_field(decision_log: dict[str, object],
                                                    message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        rules(**decision_log)


def test_a_feature_no_profile_names_is_a_config_error() -> None:
    settings = rules(feature_redaction={"claims_risk": {"claimant_agee": "drop"}})
    with pytest.raises(ConfigError, match=r"feature_redaction\.claims_risk\.claimant_agee: no "
                       r"profile of 'claims_risk' has that feature \(known: claim_amount"):
        build(settings, load_names(MODEL_REPO), b"")


def test_the_whole_file_is_the_key(tmp_path: Path) -> None:
    key = b"\n" + b"x" * 30 + b" \n"  # whitespace at either end is key, not padding
    (tmp_path / "key").write_bytes(key)
    assert read_key(tmp_path / "key") == key


def test_a_short_or_missing_key_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"x" * 8)
    with pytest.raises(ConfigError, match=r"redaction_key_file: .* holds 8 bytes; at least 32"):
        read_key(tmp_path / "short")
    with pytest.raises(ConfigError, match="redaction_key_file: cannot read"):
        read_key(tmp_path / "absent")
