"""The suite's own helpers: what the other tests rely on."""

from __future__ import annotations

from tests.helpers import free_ports


def test_free_ports_never_hand_out_a_port_twice() -> None:
    handed = [port for _ in range(500) for port in free_ports(2)]
    assert len(set(handed)) == len(handed) == 1000
