"""Free loopback ports for the servers a run starts (the bench's stacks, the suite's)."""

from __future__ import annotations

import socket

# Ports this process has handed out. A port found free is not bound until its server
# starts, so the kernel may offer it again meanwhile: seen once, a gateway and the sidecar
# behind it given one port by two calls (without this, 3-4% of 1,000 ports handed out in
# pairs were repeats).
_ISSUED: set[int] = set()


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now, none handed out before by this
    process."""
    socks = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            socks.append(s)  # held to the end, so this call is never offered one twice
            s.bind(("127.0.0.1", 0))
            if (port := s.getsockname()[1]) not in _ISSUED:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    _ISSUED.update(ports)
    return ports
