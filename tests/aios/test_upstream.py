"""What crosses a hop: the client's content and trace headers, never its credentials or
identity claims (only the gateway sets x-aios-*)."""

from __future__ import annotations

import pytest

from aios.upstream import TRITON_CLIENT_ERRORS, client_error_status, outgoing


@pytest.mark.parametrize(("name", "passes"), [
    ("content-type", True),
    ("inference-header-content-length", True),
    ("content-encoding", True),
    ("traceparent", True),
    ("tracestate", True),
    ("x-request-id", True),
    ("authorization", False),
    ("cookie", False),
    ("x-aios-tenant", False),
    ("x-aios-subject", False),
    ("host", False),
    ("content-length", False),
    ("connection", False),
])
def test_only_content_and_trace_headers_cross_a_hop(name: str, passes: bool) -> None:
    assert outgoing([(name, "v")], None) == ([(name, "v")] if passes else [])


def test_our_headers_win_over_the_clients() -> None:
    sent = outgoing([("traceparent", "client"), ("x-aios-tenant", "forged"),
                     ("content-type", "application/json")],
                    {"traceparent": "ours", "x-aios-tenant": "verified"})
    assert sent == [("content-type", "application/json"), ("traceparent", "ours"),
                    ("x-aios-tenant", "verified")]


@pytest.mark.parametrize(("status", "body", "expected"), [
    (500, b'{"error":"Unable to parse \'data\': attempt to access JSON non-number as double"}',
     400),
    (500, b'{"error":"failed to parse the request JSON buffer: Invalid value. at 1"}', 400),
    (500, b'{"error":"an internal failure of the backend"}', 500),
    (503, b'{"error":"Unable to parse \'data\': x"}', 503),
    (400, b'{"error":"unexpected inference input"}', 400),
])
def test_triton_client_errors_sent_as_500_are_400(status: int, body: bytes,
                                                  expected: int) -> None:
    assert client_error_status(status, body, TRITON_CLIENT_ERRORS) == expected
    assert client_error_status(status, body, ()) == status
