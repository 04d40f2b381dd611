"""Witnesses: where a log's signed checkpoints are kept, out of the log folder's reach.

A folder of its own is the embedded default. For a fleet, or when whoever can write
the machine's disk must not be able to replace checkpoints too, Redis or PostgreSQL:
each log's checkpoints under its name, only ever added to (a second checkpoint of the
same size is kept beside the first, so a fork shows in `aios audit verify`). Every
call is blocking and bounded in time: the writers call it from a worker thread.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import psycopg
import redis

from aios.checkpoint import Checkpoint, CheckpointError, Signer, Witness, load_private_key
from aios.config import ConfigError, LogLocation, SignedLogSettings
from aios.postgres import make_table

LATEST_FILE = "latest.json"
REDIS_PREFIX = "aios:checkpoints:"
PG_TABLE = "aios_checkpoints"
# Connecting to and answering from a remote witness, at most (seconds).
TIMEOUT_S = 5.0


class DirectoryWitness:
    """Checkpoints as files in a directory: ``checkpoint-<size>.json`` and ``latest.json``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def publish(self, checkpoint: Checkpoint) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(checkpoint.to_json(), indent=1)
        for name in (f"checkpoint-{checkpoint.size:016d}.json", LATEST_FILE):
            tmp = self.directory / (name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.directory / name)

    def checkpoints(self) -> list[Checkpoint]:
        out = []
        for path in sorted(self.directory.glob("checkpoint-*.json")):
            try:
                out.append(Checkpoint.from_json(json.loads(path.read_text())))
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from exc
        return sorted(out, key=lambda c: c.size)


def _parse(raw: Any, where: str) -> Checkpoint:
    try:
        return Checkpoint.from_json(json.loads(raw))
    except ValueError as exc:
        raise CheckpointError(f"{where}: unreadable checkpoint ({exc})") from exc


class RedisWitness:
    """A log's checkpoints in a Redis sorted set ``aios:checkpoints:<log>``, by size."""

    def __init__(self, url: str, log: str) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S,
                                           socket_connect_timeout=TIMEOUT_S)
        self.key = REDIS_PREFIX + log

    def publish(self, checkpoint: Checkpoint) -> None:
        doc = json.dumps(checkpoint.to_json(), sort_keys=True)
        try:
            self._redis.zadd(self.key, {doc: checkpoint.size})
        except redis.RedisError as exc:
            raise CheckpointError(f"redis witness {self.key}: {exc}") from exc

    def checkpoints(self) -> list[Checkpoint]:
        try:
            raw = self._redis.zrange(self.key, 0, -1)
        except redis.RedisError as exc:
            raise CheckpointError(f"redis witness {self.key}: {exc}") from exc
        return sorted((_parse(r, self.key) for r in raw), key=lambda c: c.size)


class PostgresWitness:
    """A log's checkpoints as rows of ``aios_checkpoints`` (the table made if missing)."""

    def __init__(self, url: str, log: str) -> None:
        self._url = url
        self.log = log
        self._table_made = False

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            db = psycopg.connect(self._url, connect_timeout=int(TIMEOUT_S), autocommit=True)
            db.execute(f"SET statement_timeout = {int(TIMEOUT_S * 1000)}")
            if not self._table_made:
                make_table(db, f"CREATE TABLE IF NOT EXISTS {PG_TABLE} (log TEXT NOT NULL, "
                               "size BIGINT NOT NULL, doc TEXT NOT NULL, UNIQUE (log, doc))")
                self._table_made = True
        except psycopg.Error as exc:
            raise CheckpointError(f"postgresql witness: {exc}") from exc
        return db

    def publish(self, checkpoint: Checkpoint) -> None:
        doc = json.dumps(checkpoint.to_json(), sort_keys=True)
        with self._connect() as db:
            try:
                db.execute(f"INSERT INTO {PG_TABLE} VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                           (self.log, checkpoint.size, doc))
            except psycopg.Error as exc:
                raise CheckpointError(f"postgresql witness: {exc}") from exc

    def checkpoints(self) -> list[Checkpoint]:
        with self._connect() as db:
            try:
                rows = db.execute(f"SELECT doc FROM {PG_TABLE} WHERE log = %s ORDER BY size",
                                  (self.log,)).fetchall()
            except psycopg.Error as exc:
                raise CheckpointError(f"postgresql witness: {exc}") from exc
        return [_parse(doc, f"{PG_TABLE} ({self.log})") for (doc,) in rows]


def witness_at(where: str | Path, log: str) -> Witness:
    """The witness at a Redis or PostgreSQL URL (``log``'s checkpoints there), or in a
    folder."""
    text = str(where)
    if text.startswith(("redis://", "rediss://")):
        return RedisWitness(text, log)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresWitness(text, log)
    return DirectoryWitness(Path(where))


def open_witness(settings: LogLocation) -> Witness:
    """The witness a signed log's settings name."""
    return witness_at(settings.witness_url or settings.witness, settings.log_name)


def open_signer(settings: SignedLogSettings, section: str) -> Signer | None:
    """The log's signer, if it has a key; ConfigError naming ``section``'s field if the
    key cannot be used."""
    if settings.signing_key_file is None:
        return None
    try:
        key = load_private_key(settings.signing_key_file)
    except CheckpointError as exc:
        raise ConfigError(f"{section}.signing_key_file: {exc}") from exc
    return Signer(key, settings.log_name, open_witness(settings))
