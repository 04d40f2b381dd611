"""A search index beside the decision log's segments: SQLite, brought up to date from the
segments before each search (incrementally: only what was appended since), rebuilt when
missing or when it does not match them.

The index is never trusted over the log: it says where a record lies, and what is shown
is the record read from its segment there, whose own hash and decision id must match
what the index holds (else the index is rebuilt). Whether the log itself is intact is
`aios audit verify`'s question.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from aios.auditlog import Located, located, record_at, segments
from proto.decision_record_pb2 import DecisionRecord

INDEX_FILE = "index.sqlite3"
SCHEMA_VERSION = 1
# Records inserted per transaction while indexing.
CHUNK = 10_000
MAX_PAGE = 1000
# Matches counted at most: counting half a million rows would cost more than the search.
COUNT_CAP = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    sequence INTEGER PRIMARY KEY, decision_id TEXT NOT NULL, request_id TEXT NOT NULL,
    business_key TEXT NOT NULL, tenant TEXT NOT NULL, model TEXT NOT NULL,
    version TEXT NOT NULL, outcome TEXT NOT NULL, shadow INTEGER NOT NULL,
    time_unix_nanos INTEGER NOT NULL, segment TEXT NOT NULL, offset INTEGER NOT NULL,
    hash BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS by_decision ON decisions (decision_id);
CREATE INDEX IF NOT EXISTS by_request ON decisions (request_id);
CREATE INDEX IF NOT EXISTS by_key ON decisions (business_key, time_unix_nanos);
CREATE INDEX IF NOT EXISTS by_tenant ON decisions (tenant, time_unix_nanos);
CREATE INDEX IF NOT EXISTS by_model ON decisions (model, version, time_unix_nanos);
CREATE INDEX IF NOT EXISTS by_time ON decisions (time_unix_nanos);
"""

# Search fields and the column each one matches exactly.
FILTERS = {"key": "business_key", "request_id": "request_id", "decision_id": "decision_id",
           "tenant": "tenant", "model": "model", "version": "version", "outcome": "outcome"}

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Query:
    """What to look for: exact fields (FILTERS' names), a time range, a page."""

    fields: tuple[tuple[str, str], ...] = ()
    since_ns: int | None = None
    until_ns: int | None = None
    limit: int = 20
    page: int = 1

    def where(self) -> tuple[str, list[object]]:
        clauses: list[str] = []
        args: list[object] = []
        for name, value in self.fields:
            if name not in FILTERS:
                raise ValueError(f"cannot search by {name!r}: one of {', '.join(FILTERS)}")
            clauses.append(f"{FILTERS[name]} = ?")
            args.append(value)
        if self.since_ns is not None:
            clauses.append("time_unix_nanos >= ?")
            args.append(self.since_ns)
        if self.until_ns is not None:
            clauses.append("time_unix_nanos < ?")
            args.append(self.until_ns)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


class StaleIndex(Exception):
    """The index does not match the segments (it will be rebuilt)."""


class AuditIndex:
    """The index of the log in ``directory`` (see the module docstring)."""

    def __init__(self, directory: Path, path: Path | None = None) -> None:
        self.directory = directory
        self.path = path or directory / INDEX_FILE
        self._db: sqlite3.Connection | None = None

    def __enter__(self) -> AuditIndex:
        self._db = self._open()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._db is not None:
            self._db.close()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path)
        db.executescript(_SCHEMA)
        version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if version is not None and version[0] != str(SCHEMA_VERSION):
            db.close()
            self.path.unlink()
            return self._open()
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        db.commit()
        return db

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "use AuditIndex as a context manager"
        return self._db

    def update(self, progress: Progress | None = None) -> int:
        """Index what was appended since the last update (all of it the first time, or
        when the index does not match the segments); how many records were added."""
        try:
            return self._append(progress)
        except StaleIndex:
            self.rebuild()
            return self._append(progress)

    def rebuild(self) -> None:
        """Forget everything (the next update reads all the segments)."""
        self.db.execute("DELETE FROM decisions")
        self.db.execute("DELETE FROM meta WHERE key != 'schema'")
        self.db.commit()

    def _append(self, progress: Progress | None) -> int:
        last = self.db.execute("SELECT sequence, segment, offset, hash FROM decisions "
                               "ORDER BY sequence DESC LIMIT 1").fetchone()
        after = None
        if last is not None:
            sequence, segment, offset, digest = last
            rec = record_at(self.directory, segment, offset)
            if rec is None or rec.sequence != sequence or rec.hash != digest:
                raise StaleIndex
            (rows_indexed,) = self.db.execute("SELECT count(*) FROM decisions").fetchone()
            if rows_indexed != sequence:  # sequences run 1, 2, ...: a row went missing
                raise StaleIndex
            after = (segment, offset)
        added = 0
        rows = []
        for item in located(self.directory, after):
            if after is not None and (item.segment, item.offset) == after:
                continue
            rows.append(_row(item))
            if len(rows) == CHUNK:
                added += self._insert(rows)
                rows = []
                if progress is not None:
                    progress(added)
        added += self._insert(rows)
        if progress is not None and added:
            progress(added)
        return added

    def _insert(self, rows: list[tuple[object, ...]]) -> int:
        try:
            self.db.executemany("INSERT INTO decisions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        except sqlite3.IntegrityError as exc:  # a sequence indexed twice: not this log's
            self.db.rollback()
            raise StaleIndex from exc
        self.db.commit()
        return len(rows)

    def count(self, query: Query) -> int:
        """How many match, up to COUNT_CAP + 1 (more than COUNT_CAP: "over COUNT_CAP")."""
        where, args = query.where()
        (total,) = self.db.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM decisions{where} LIMIT ?)",
            [*args, COUNT_CAP + 1]).fetchone()
        return int(total)

    def search(self, query: Query) -> list[DecisionRecord]:
        """The records matching ``query``, oldest first, one page; each read from its
        segment (StaleIndex if one is not where the index says)."""
        where, args = query.where()
        limit = max(1, min(query.limit, MAX_PAGE))
        rows = self.db.execute(
            f"SELECT sequence, decision_id, segment, offset, hash FROM decisions{where} "
            "ORDER BY sequence LIMIT ? OFFSET ?",
            [*args, limit, (max(1, query.page) - 1) * limit]).fetchall()
        return list(self._read(rows, query))

    def _read(self, rows: list[tuple[int, str, str, int, bytes]],
              query: Query) -> Iterator[DecisionRecord]:
        for sequence, decision_id, segment, offset, digest in rows:
            rec = record_at(self.directory, segment, offset)
            if rec is None or (rec.sequence, rec.decision_id, rec.hash) != (
                    sequence, decision_id, digest) or any(
                    getattr(rec, FILTERS[name]) != value for name, value in query.fields):
                raise StaleIndex
            yield rec


def _row(item: Located) -> tuple[object, ...]:
    r = item.record
    return (r.sequence, r.decision_id, r.request_id, r.business_key, r.tenant, r.model,
            r.version, r.outcome, int(r.shadow), r.time_unix_nanos, item.segment, item.offset,
            r.hash)


def search(directory: Path, query: Query, progress: Progress | None = None,
           ) -> tuple[list[DecisionRecord], int]:
    """The page of records matching ``query`` and how many match in all, after bringing
    the index up to date; an index that does not match the segments is rebuilt."""
    if not segments(directory):
        raise FileNotFoundError(f"no decision log segments in {directory}")
    with AuditIndex(directory) as index:
        index.update(progress)
        try:
            return index.search(query), index.count(query)
        except StaleIndex:
            index.rebuild()
            index.update(progress)
            return index.search(query), index.count(query)
