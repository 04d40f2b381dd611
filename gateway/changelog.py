"""The gateway's change log: every routing change it applies, as a record of kind
``route_change`` in a hash-chained log with signed checkpoints, the same format and
tools as the sidecar's decision log (`aios audit verify --dir var/route-changes`).

A decision record names the route revision it went by; the change that made that
revision is in this chain: who, when, why, and what it touched before and after. Changes
are few, so each is written alone: appended, fsynced, HEAD moved and (with a key) a
checkpoint signed before the admin call answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from aios.auditlog import recover, write_head
from aios.chain import seal
from aios.checkpoint import CheckpointError, Durable, Signer, open_signer
from aios.config import SignedLogSettings
from aios.errors import LogUnavailable
from aios.merkle import Frontier
from gateway.routestore import Change
from proto.decision_record_pb2 import DecisionRecord, RouteChange

logger = logging.getLogger(__name__)

KIND = "route_change"


def change_record(change: Change) -> DecisionRecord:
    """A routing change as a record of the chain."""
    return DecisionRecord(
        kind=KIND, time_unix_nanos=int(change.at * 1e9), subject=change.who,
        model=change.model, route_revision=change.revision,
        route_change=RouteChange(
            action=change.action, reason=change.reason,
            before_json="" if change.before is None else json.dumps(change.before,
                                                                     sort_keys=True),
            after_json=json.dumps(change.after, sort_keys=True)))


class ChangeLog:
    """Appends routing changes (see the module docstring)."""

    def __init__(self, directory: Path, signer: Signer | None, tree: Frontier,
                 sequence: int, last: bytes) -> None:
        self._dir = directory
        self._signer = signer
        self._tree = tree
        self._sequence, self._last = sequence, last
        # A fresh segment after a restart: never append after a tail a crash may have torn.
        self._segment = directory / f"segment-{sequence + 1:016d}.log"
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, settings: SignedLogSettings) -> ChangeLog:
        """The change log in ``settings.directory``, continuing its chain (it holds no
        file open between changes: nothing to close)."""
        settings.directory.mkdir(parents=True, exist_ok=True)
        signer = open_signer(settings, "gateway.change_log")
        tree = Frontier()
        sequence, last = await asyncio.to_thread(recover, settings.directory, tree)
        return cls(settings.directory, signer, tree, sequence, last)

    async def append(self, change: Change) -> None:
        """Record ``change`` durably (LogUnavailable if it cannot be)."""
        async with self._lock:
            try:
                await asyncio.to_thread(self._write, change_record(change))
            except (OSError, CheckpointError) as exc:
                logger.error("change log: routing change %s r%d not recorded (%s)",
                             change.model, change.revision, exc)
                raise LogUnavailable(f"the routing change was applied but not recorded in "
                                     f"the change log ({exc})") from exc

    def _write(self, record: DecisionRecord) -> None:
        frame = seal(record, self._sequence + 1, self._last)
        fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            os.write(fd, frame)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self._sequence, self._last = record.sequence, record.hash
        self._tree.append(record.hash)
        write_head(self._dir, self._sequence, self._last, self._segment.name)
        if self._signer is not None:
            self._signer.publish(Durable(self._tree.size, self._tree.root(), self._sequence,
                                         self._last))
