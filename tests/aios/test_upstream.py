"""What crosses a hop: the client's content and trace headers, never its credentials or
identity claims (only the gateway sets x-aios-*)."""

from __future__ import annotations

import pytest

from aios.upstream import forwardable


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
def test_forwardable(name: str, passes: bool) -> None:
    assert forwardable(name) is passes
