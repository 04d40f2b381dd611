"""What a model call was let in with (`gateway.plane` admits; a stream keeps it per
request until the request's last response)."""

from __future__ import annotations

from dataclasses import dataclass

from aios.plane import SUBJECT_HEADER, TENANT_HEADER
from gateway.auth import Principal
from gateway.quota import Lease


@dataclass(frozen=True, slots=True)
class Admission:
    """What a call was let in with: who is calling, and its quota lease."""

    principal: Principal | None
    lease: Lease | None

    def identity(self) -> dict[str, str]:
        """Headers that tell the next hop who is calling."""
        if self.principal is None:
            return {}
        return {TENANT_HEADER: self.principal.tenant, SUBJECT_HEADER: self.principal.subject}


OPEN = Admission(None, None)
