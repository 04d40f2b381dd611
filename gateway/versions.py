"""Which model versions the backends serve: asked of the backend (the sidecar, hence
Triton), and cached for the data plane, which refuses a pinned version nobody serves
before routing it (so a client cannot make up versions: each would be a metric series).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aios.errors import NotFound, NotReady
from aios.plane import model_path
from aios.upstream import HttpUpstream
from gateway.routing import ModelTable

# An unknown version is looked up again at most this often per model.
VERSIONS_REFRESH_S = 5.0


class VersionLookup(Protocol):
    """Which versions of a model a backend serves."""

    async def versions(self, backend: str, model: str) -> set[str]:
        """The versions ``backend`` serves of ``model`` (empty if it does not serve it)."""
        ...


class BackendVersions:
    """Asks the backend (the sidecar, hence Triton) for the model's metadata."""

    def __init__(self, http: Mapping[str, HttpUpstream]) -> None:
        self._http = http

    async def versions(self, backend: str, model: str) -> set[str]:
        reply = await self._http[backend].request("GET", model_path(model), b"", ())
        if reply.status == 404:
            return set()
        if reply.status != 200:
            raise NotReady(f"cannot check versions: backend '{backend}' answered "
                           f"{reply.status}")
        return {str(v) for v in json.loads(reply.body).get("versions", [])}


def unknown_version(model: str, version: str) -> NotFound:
    """Triton's own answer to a version it does not serve."""
    return NotFound(f"Request for unknown model: '{model}' version {version} is not found")


@dataclass(frozen=True, slots=True)
class _Served:
    versions: frozenset[str]
    at: float


class ServedVersions:
    """The versions a model's backends serve, cached; a version not among them is looked
    up again at most once per ``refresh_s``, so made-up versions cost a dict lookup."""

    def __init__(self, lookup: VersionLookup, refresh_s: float = VERSIONS_REFRESH_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lookup = lookup
        self._refresh_s = refresh_s
        self._clock = clock
        self._served: dict[str, _Served] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _stale(self, model: str) -> bool:
        served = self._served.get(model)
        return served is None or self._clock() - served.at >= self._refresh_s

    async def check(self, table: ModelTable, version: str) -> None:
        """NotFound (Triton's text) unless a backend of ``table`` serves ``version``."""
        served = self._served.get(table.model)
        if served is not None and version in served.versions:
            return
        if self._stale(table.model):
            lock = self._locks.setdefault(table.model, asyncio.Lock())
            async with lock:
                if self._stale(table.model):  # another call may have refreshed meanwhile
                    await self._refresh(table)
        if version not in self._served[table.model].versions:
            raise unknown_version(table.model, version)

    async def _refresh(self, table: ModelTable) -> None:
        backends = sorted({t.backend for t in table.targets})
        found = await asyncio.gather(*(self._lookup.versions(b, table.model)
                                       for b in backends), return_exceptions=True)
        answers = [v for v in found if not isinstance(v, BaseException)]
        if not answers:  # no backend answered: nothing to decide by
            error = found[0]
            assert isinstance(error, BaseException)
            raise error
        self._served[table.model] = _Served(frozenset().union(*answers), self._clock())
