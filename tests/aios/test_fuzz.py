"""Fuzzing the parsers clients reach: client garbage may only ever produce our 4xx errors.

Runs briefly in `make test` (and replays the seed corpus in tests/corpus/ every time);
`make fuzz` runs the same properties much longer (HYPOTHESIS_PROFILE=fuzz).
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aios.config import AuthSettings
from aios.errors import InvalidInput, Unauthenticated
from aios.kserve import (
    json_header_length,
    peek_batch,
    peek_model,
    peek_parameters,
    validate_infer_request,
)
from aios.tensors import grpc_request_inputs
from gateway.admin import ReplaceBody, ShadowBody, WeightsBody, parse
from gateway.auth import JwtVerifier, bearer_token
from tests.helpers import TEST_AUTH

# Bounded time: any single input that takes longer than the deadline fails the property.
DEADLINE = timedelta(seconds=2)
settings.register_profile("ci", max_examples=150, deadline=DEADLINE,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=20_000, deadline=DEADLINE,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(
        st.sampled_from(["inputs", "name", "datatype", "shape", "data", "parameters",
                         "binary_data_size", "outputs", "id", "sequence_id"]) | st.text(
            max_size=5), children, max_size=5),
    max_leaves=30)


def rest_body_is_handled(body: bytes, header: str | None) -> None:
    with contextlib.suppress(InvalidInput):
        validate_infer_request(body, json_header_length(header, len(body)))


def grpc_body_is_handled(body: bytes) -> None:
    for parse_fn in (peek_model, peek_batch, peek_parameters, grpc_request_inputs):
        with contextlib.suppress(InvalidInput):
            parse_fn(body)  # type: ignore[operator]


@pytest.mark.parametrize("path", sorted(CORPUS.iterdir()), ids=lambda p: p.name)
def test_seed_corpus(path: Path) -> None:
    data = path.read_bytes()
    if path.suffix == ".json":
        rest_body_is_handled(data, None)
    else:
        grpc_body_is_handled(data)


@given(st.binary(max_size=512), st.one_of(st.none(), st.text(max_size=6)))
def test_rest_bytes(body: bytes, header: str | None) -> None:
    rest_body_is_handled(body, header)


@given(json_values)
def test_rest_json_structures(doc: Any) -> None:
    rest_body_is_handled(json.dumps(doc).encode(), None)


@given(st.binary(max_size=512))
def test_grpc_bytes(body: bytes) -> None:
    grpc_body_is_handled(body)


@given(st.text(max_size=300))
async def test_tokens(text: str) -> None:
    verifier = JwtVerifier(AuthSettings(**TEST_AUTH), None)
    with contextlib.suppress(Unauthenticated):
        await verifier.verify(bearer_token(text))


@given(json_values, st.sampled_from([ReplaceBody, WeightsBody, ShadowBody]))
def test_admin_bodies(doc: Any, body_type: type) -> None:
    with contextlib.suppress(InvalidInput):
        parse(body_type, doc)
