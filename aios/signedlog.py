"""A small signed log written one record at a time: each append is chained, written,
fsynced, HEAD moved and (with a key) a checkpoint signed before it returns. For logs of
few, important records (the gateway's routing changes and audit reads); the decision
log, which writes thousands a second, batches (`sidecar.decisionlog`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from aios.auditlog import recover, write_head
from aios.chain import seal
from aios.checkpoint import CheckpointError, Durable, Signer
from aios.config import SignedLogSettings
from aios.errors import LogUnavailable
from aios.merkle import Frontier
from aios.witness import open_signer
from proto.decision_record_pb2 import DecisionRecord

logger = logging.getLogger(__name__)


class SignedLog:
    """Appends records durably to the chain in one folder (see the module docstring)."""

    def __init__(self, directory: Path, signer: Signer | None, tree: Frontier,
                 sequence: int, last: bytes) -> None:
        self.directory = directory
        self._signer = signer
        self._tree = tree
        self._sequence, self._last = sequence, last
        # A fresh segment after a restart: never append after a tail a crash may have torn.
        self._segment = directory / f"segment-{sequence + 1:016d}.log"
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, settings: SignedLogSettings, section: str) -> SignedLog:
        """The log in ``settings.directory``, continuing its chain (it holds no file open
        between appends: nothing to close); key errors name ``section``."""
        settings.directory.mkdir(parents=True, exist_ok=True)
        signer = open_signer(settings, section)
        tree = Frontier()
        sequence, last = await asyncio.to_thread(recover, settings.directory, tree)
        return cls(settings.directory, signer, tree, sequence, last)

    async def append(self, record: DecisionRecord, what: str) -> None:
        """Record ``record`` durably; LogUnavailable (naming ``what``) if it cannot be."""
        async with self._lock:
            try:
                await asyncio.to_thread(self._write, record)
            except (OSError, CheckpointError) as exc:
                logger.error("%s: %s not recorded (%s)", self.directory, what, exc)
                raise LogUnavailable(f"{what} could not be recorded in {self.directory.name} "
                                     f"({exc})") from exc

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
        write_head(self.directory, self._sequence, self._last, self._segment.name)
        if self._signer is not None:
            self._signer.publish(Durable(self._tree.size, self._tree.root(), self._sequence,
                                         self._last))
