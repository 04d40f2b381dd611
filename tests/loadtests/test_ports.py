"""Free ports for the servers a run starts (the bench's and the suite's)."""

from __future__ import annotations

from loadtests.ports import free_ports


def test_free_ports_never_hand_out_a_port_twice() -> None:
    handed = [port for _ in range(500) for port in free_ports(2)]
    assert len(set(handed)) == len(handed) == 1000
