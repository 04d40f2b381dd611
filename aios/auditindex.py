"""A search index beside a signed log's segments: SQLite in the log's folder by default,
or PostgreSQL for a fleet (one database for every log, each under its name). Brought up
to date from the segments before each search (incrementally: only what was appended
since), rebuilt when missing or when it does not match them.

The index is never trusted over the log: it says where a record lies, and what is shown
is the record read from its segment there, whose own hash, decision id and searched
fields must match what the index holds (else the index is rebuilt). A row edited to
hide a record from a search is found by `check` (`aios audit verify`). Whether the log
itself is intact is `aios.auditlog.verify`'s question.
"""

from __future__ import annotations

import contextlib
import datetime
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from aios.auditlog import Located, located, record_at, segments
from aios.postgres import make_table
from proto.decision_record_pb2 import DecisionRecord

INDEX_FILE = "index.sqlite3"
SCHEMA_VERSION = 2
# Records inserted per transaction while indexing.
CHUNK = 10_000
MAX_PAGE = 1000
# Matches counted at most: counting half a million rows would cost more than the search.
COUNT_CAP = 10_000

_COLUMNS = ("log", "sequence", "decision_id", "request_id", "business_key", "tenant",
            "model", "version", "outcome", "shadow", "time_unix_nanos", "segment",
            "at_offset", "hash")
# A SQLite index holds one log and is searched without naming it; PostgreSQL's hold many
# and every search names the log: so the log leads its keys there (``{log}``), and only
# there (before a searched field it would keep SQLite from using the index; a sequence
# that is not SQLite's row id makes "oldest first" a sort of every match).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS aios_index_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS aios_decisions (
    log TEXT NOT NULL, sequence {sequence}, decision_id TEXT NOT NULL,
    request_id TEXT NOT NULL, business_key TEXT NOT NULL, tenant TEXT NOT NULL,
    model TEXT NOT NULL, version TEXT NOT NULL, outcome TEXT NOT NULL,
    shadow INTEGER NOT NULL, time_unix_nanos BIGINT NOT NULL, segment TEXT NOT NULL,
    at_offset BIGINT NOT NULL, hash {blob} NOT NULL{primary});
CREATE INDEX IF NOT EXISTS aios_by_decision ON aios_decisions ({log}decision_id);
CREATE INDEX IF NOT EXISTS aios_by_request ON aios_decisions ({log}request_id);
CREATE INDEX IF NOT EXISTS aios_by_key ON aios_decisions ({log}business_key, time_unix_nanos);
CREATE INDEX IF NOT EXISTS aios_by_tenant ON aios_decisions ({log}tenant, time_unix_nanos);
CREATE INDEX IF NOT EXISTS aios_by_model ON aios_decisions ({log}model, version,
                                                            time_unix_nanos);
CREATE INDEX IF NOT EXISTS aios_by_time ON aios_decisions ({log}time_unix_nanos)
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

    def where(self, log: str | None) -> tuple[str, list[object]]:
        """The WHERE clause and its arguments; ``log`` limits it to one log's rows (None:
        a SQLite index, which holds its folder's log alone; a `log = ?` there made
        SQLite walk every row in sequence order rather than use the field's index)."""
        clauses = [] if log is None else ["log = ?"]
        args: list[object] = [] if log is None else [log]
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


def parse_time_ns(text: str | None, field: str) -> int | None:
    """An ISO 8601 time (UTC unless it says otherwise) in ns; ValueError naming ``field``."""
    if text is None:
        return None
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{field}: not an ISO 8601 time ({text!r}), e.g. "
                         "2026-12-01 or 2026-12-01T09:30") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1e9)


class StaleIndex(Exception):
    """The index does not match the segments (it will be rebuilt)."""


class _Sql:
    """The few statements the index runs, on SQLite or PostgreSQL (``?`` placeholders)."""

    def __init__(self, url: str | None, path: Path) -> None:
        self.postgres = url is not None
        self._db: Any = psycopg.connect(url, connect_timeout=5) if url is not None \
            else sqlite3.connect(path, timeout=30)
        self.integrity: tuple[type[Exception], ...] = (
            psycopg.errors.UniqueViolation if url is not None else sqlite3.IntegrityError,)

    def _text(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def rows(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return list(self._db.execute(self._text(sql), args).fetchall())

    def run(self, sql: str, args: Sequence[object] = ()) -> None:
        self._db.execute(self._text(sql), args)

    def many(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        self._db.cursor().executemany(self._text(sql), rows)

    def count_rows(self, log: str) -> int:
        """How many rows ``log`` has. A SQLite index lives in its log's folder and holds
        that log alone, so it counts the table (a count SQLite answers from its smallest
        index; with a WHERE it walks the log's rows: 15 times slower at a million)."""
        if self.postgres:
            [(n,)] = self.rows("SELECT count(*) FROM aios_decisions WHERE log = ?", (log,))
        else:
            [(n,)] = self.rows("SELECT count(*) FROM aios_decisions")
        return int(n)

    def schema(self) -> None:
        if self.postgres:
            schema = _SCHEMA.format(blob="BYTEA", log="log, ", sequence="BIGINT NOT NULL",
                                    primary=", PRIMARY KEY (log, sequence)")
        else:
            schema = _SCHEMA.format(blob="BLOB", log="", sequence="INTEGER PRIMARY KEY",
                                    primary="")
        if self.postgres:
            make_table(self._db, *schema.split(";"))
            return
        for statement in schema.split(";"):
            self.run(statement)
        self.commit()

    @contextlib.contextmanager
    def exclusive(self, log: str) -> Iterator[None]:
        """One indexer of ``log`` at a time among the processes sharing a PostgreSQL
        index (two would insert the same rows, and each then rebuild); SQLite locks the
        file by itself."""
        if not self.postgres:
            yield
            return
        self.run("SELECT pg_advisory_lock(hashtext(?))", (log,))
        self.commit()
        try:
            yield
        finally:
            self.rollback()
            self.run("SELECT pg_advisory_unlock(hashtext(?))", (log,))
            self.commit()

    def commit(self) -> None:
        self._db.commit()

    def rollback(self) -> None:
        self._db.rollback()

    def close(self) -> None:
        self._db.close()


class AuditIndex:
    """The index of the log in ``directory`` (see the module docstring): a SQLite file
    (``path``, default in the folder) or, with ``url``, a PostgreSQL database, where the
    log's rows go under ``log`` (default: the folder's name)."""

    def __init__(self, directory: Path, path: Path | None = None, url: str | None = None,
                 log: str = "") -> None:
        self.directory = directory
        self.path = path or directory / INDEX_FILE
        self.url = url
        self.log = log or directory.name
        self._db: _Sql | None = None

    def __enter__(self) -> AuditIndex:
        self._db = self._open()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._db is not None:
            self._db.close()

    def _open(self) -> _Sql:
        db = _Sql(self.url, self.path)
        if not db.postgres and db.rows("SELECT 1 FROM sqlite_master WHERE name = 'meta'"):
            db.close()  # the first schema's file: made again
            self.path.unlink()
            db = _Sql(self.url, self.path)
        db.schema()
        version = db.rows("SELECT value FROM aios_index_meta WHERE key = 'schema'")
        # Several indexers may meet a fresh (or an old) database at once: each step holds
        # if another did it first.
        if version and version[0][0] != str(SCHEMA_VERSION):
            for table in ("aios_decisions", "aios_index_meta"):
                db.run(f"DROP TABLE IF EXISTS {table}")
            db.commit()
            db.schema()
        if not version or version[0][0] != str(SCHEMA_VERSION):
            db.run("INSERT INTO aios_index_meta VALUES ('schema', ?) ON CONFLICT (key) DO "
                   "NOTHING", (str(SCHEMA_VERSION),))
            db.commit()
        return db

    @property
    def db(self) -> _Sql:
        assert self._db is not None, "use AuditIndex as a context manager"
        return self._db

    def update(self, progress: Progress | None = None) -> int:
        """Index what was appended since the last update (all of it the first time, or
        when the index does not match the segments); how many records were added."""
        with self.db.exclusive(self.log):
            try:
                return self._append(progress)
            except StaleIndex:
                self.rebuild()
                return self._append(progress)

    def rebuild(self) -> None:
        """Forget this log's rows (the next update reads all the segments); a SQLite
        index holds its folder's log alone, so every row it has."""
        if self.db.postgres:
            self.db.run("DELETE FROM aios_decisions WHERE log = ?", (self.log,))
        else:
            self.db.run("DELETE FROM aios_decisions")
        self.db.commit()

    def _append(self, progress: Progress | None) -> int:
        last = self.db.rows("SELECT sequence, segment, at_offset, hash FROM aios_decisions "
                            "WHERE log = ? ORDER BY sequence DESC LIMIT 1", (self.log,))
        after = None
        if last:
            sequence, segment, offset, digest = last[0]
            rec = record_at(self.directory, segment, offset)
            if rec is None or rec.sequence != sequence or rec.hash != bytes(digest):
                raise StaleIndex
            rows_indexed = self.db.count_rows(self.log)
            if rows_indexed != sequence:  # sequences run 1, 2, ...: a row went missing
                raise StaleIndex
            after = (segment, offset)
        added = 0
        rows = []
        for item in located(self.directory, after):
            if after is not None and (item.segment, item.offset) == after:
                continue
            rows.append(_row(self.log, item))
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
        if not rows:
            return 0
        try:
            self.db.many(f"INSERT INTO aios_decisions VALUES ({','.join('?' * len(_COLUMNS))})",
                         rows)
        except self.db.integrity as exc:  # a sequence indexed twice: not this log's
            self.db.rollback()
            raise StaleIndex from exc
        self.db.commit()
        return len(rows)

    def count(self, query: Query) -> int:
        """How many match, up to COUNT_CAP + 1 (more than COUNT_CAP: "over COUNT_CAP")."""
        where, args = query.where(self.log if self.db.postgres else None)
        [(total,)] = self.db.rows(
            f"SELECT count(*) FROM (SELECT 1 FROM aios_decisions{where} LIMIT ?) AS hits",
            [*args, COUNT_CAP + 1])
        return int(total)

    def search(self, query: Query) -> list[DecisionRecord]:
        """The records matching ``query``, oldest first, one page; each read from its
        segment (StaleIndex if one is not where the index says)."""
        where, args = query.where(self.log if self.db.postgres else None)
        limit = max(1, min(query.limit, MAX_PAGE))
        rows = self.db.rows(
            f"SELECT sequence, decision_id, segment, at_offset, hash FROM aios_decisions{where} "
            "ORDER BY sequence LIMIT ? OFFSET ?",
            [*args, limit, (max(1, query.page) - 1) * limit])
        return list(self._read(rows, query))

    def _read(self, rows: list[tuple[Any, ...]], query: Query) -> Iterator[DecisionRecord]:
        for sequence, decision_id, segment, offset, digest in rows:
            rec = record_at(self.directory, segment, offset)
            if rec is None or (rec.sequence, rec.decision_id, rec.hash) != (
                    sequence, decision_id, bytes(digest)) or any(
                    getattr(rec, FILTERS[name]) != value for name, value in query.fields):
                raise StaleIndex
            yield rec

    def check(self) -> int:
        """How many of this log's rows differ from the records in the segments (a row
        edited so that a search misses its record, one missing, one too many); a bad
        index is rebuilt."""
        indexed = {r[1]: r for r in self.db.rows(
            f"SELECT {', '.join(_COLUMNS)} FROM aios_decisions WHERE log = ?", (self.log,))}
        top = max(indexed, default=0)
        wrong = 0
        for item in located(self.directory):
            if item.record.sequence > top:
                # Written since the index was last brought up to date (a live log): the
                # next update adds it, so no search can miss it.
                break
            row = indexed.pop(item.record.sequence, None)
            if row is None or (*row[:-1], bytes(row[-1])) != _row(self.log, item):
                wrong += 1
        wrong += len(indexed)
        if wrong:
            self.rebuild()
            self.update()
        return wrong


def _row(log: str, item: Located) -> tuple[object, ...]:
    r = item.record
    return (log, r.sequence, r.decision_id, r.request_id, r.business_key, r.tenant, r.model,
            r.version, r.outcome, int(r.shadow), r.time_unix_nanos, item.segment, item.offset,
            r.hash)


def search(directory: Path, query: Query, progress: Progress | None = None, *,
           url: str | None = None, log: str = "") -> tuple[list[DecisionRecord], int]:
    """The page of records matching ``query`` and how many match in all, after bringing
    the index (in the folder, or at the PostgreSQL ``url`` under ``log``) up to date; an
    index that does not match the segments is rebuilt."""
    if not segments(directory):
        raise FileNotFoundError(f"no decision log segments in {directory}")
    with AuditIndex(directory, url=url, log=log) as index:
        index.update(progress)
        try:
            return index.search(query), index.count(query)
        except StaleIndex:
            index.rebuild()
            index.update(progress)
            return index.search(query), index.count(query)
