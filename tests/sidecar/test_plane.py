"""`sidecar.plane.routed`: the version an Envoy route chose, from its headers. Pure."""

from __future__ import annotations

import pytest

from aios.errors import InvalidInput
from aios.plane import ModelCall
from sidecar.plane import mirrored, routed


def call(version: str = "", **headers: str) -> ModelCall:
    return ModelCall("claims_risk", version, "/infer", "POST", b"{}",
                     [(k.replace("_", "-"), v) for k, v in headers.items()])


@pytest.mark.parametrize("given, expected", [
    (call(), ("claims_risk", "")),
    (call(x_aios_version="1"), ("claims_risk", "1")),
    # A version in the path wins over the header (the gateway pins in the path).
    (call("2", x_aios_version="1"), ("claims_risk", "2")),
    # Only a mirrored copy takes the shadow's model and version.
    (call(x_aios_version="1", x_aios_shadow_version="2"), ("claims_risk", "1")),
    (call(x_aios_version="1", x_aios_shadow_version="2", host="sidecar:8090-shadow"),
     ("claims_risk", "2")),
    # A shadow without a version asks the shadow model unpinned.
    (call(x_aios_version="1", x_aios_shadow_model="claims_next", host="s-shadow"),
     ("claims_next", "")),
    (call("1", x_aios_shadow_version="2", host="s-shadow"), ("claims_risk", "2")),
])
def test_routed_applies_envoys_routing_headers(given: ModelCall,
                                                expected: tuple[str, str]) -> None:
    result = routed(given)
    assert (result.model, result.version) == expected
    assert result.upstream_path == f"/v2/models/{expected[0]}" + (
        f"/versions/{expected[1]}" if expected[1] else "") + "/infer"


@pytest.mark.parametrize("bad", ["abc", "1/../2", "²", "-1"])
def test_a_bad_version_header_is_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="routing header: bad model version"):
        routed(call(x_aios_version=bad))


@pytest.mark.parametrize("bad", ["..", "a/../../admin", "m x", "m?x=1"])
def test_a_mirrored_copy_with_a_bad_model_name_is_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="routing header: bad model name"):
        routed(call(x_aios_shadow_model=bad, host="s-shadow"))


def test_mirrored_reads_envoys_host_suffix() -> None:
    assert mirrored([("host", "sidecar-shadow")])
    assert not mirrored([("host", "sidecar")]) and not mirrored([])
