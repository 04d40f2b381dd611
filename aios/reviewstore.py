"""Where review items and each model's review gates are kept: a SQLite file (the
embedded default; the sidecar and the gateway of one machine share it) or PostgreSQL
(a fleet). One SQL text serves both; a store is chosen by its URL.

Items change only by compare-and-set on their revision: a transition is computed on
the item as read (`aios.reviewqueue`) and written only if nobody changed the item
meanwhile, else it is computed again on what is there now, which refuses it (409) if
someone else decided or claimed it first. Gates are kept as numbered revisions, each
added only on top of the one it was based on. Every call blocks (run it in a worker
thread) and is bounded in time; a database that cannot be reached raises
StoreUnavailable (503), and PostgreSQL is reconnected to on the next call. A PostgreSQL
connection idle for PING_AFTER_IDLE_S is checked before it is used, so the first call
after a database restart reconnects instead of failing on the dead connection.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg

from aios.errors import Conflict, NotFound, StoreUnavailable
from aios.postgres import make_table
from aios.reviewqueue import Item

TIMEOUT_S = 5.0
MAX_COMPARE_AND_SET = 20
# A PostgreSQL connection idle this long is pinged before it is used (a round trip on a
# call after a pause, none on a busy one).
PING_AFTER_IDLE_S = 1.0

_TABLES = (
    """CREATE TABLE IF NOT EXISTS aios_reviews (
    id TEXT PRIMARY KEY, decision_id TEXT NOT NULL, model TEXT NOT NULL,
    tenant TEXT NOT NULL, gate TEXT NOT NULL, state TEXT NOT NULL, priority BIGINT NOT NULL,
    queued_ns BIGINT NOT NULL, decided_ns BIGINT NOT NULL, action TEXT NOT NULL,
    source TEXT NOT NULL, chained INTEGER NOT NULL, announced INTEGER NOT NULL,
    revision BIGINT NOT NULL, doc TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS aios_reviews_open ON aios_reviews (state, priority, queued_ns)",
    "CREATE INDEX IF NOT EXISTS aios_reviews_decision ON aios_reviews (decision_id)",
    "CREATE INDEX IF NOT EXISTS aios_reviews_unfinished ON aios_reviews (source, announced)",
    """CREATE TABLE IF NOT EXISTS aios_review_gates (
    model TEXT NOT NULL, revision BIGINT NOT NULL, doc TEXT NOT NULL, who TEXT NOT NULL,
    reason TEXT NOT NULL, time_ns BIGINT NOT NULL, PRIMARY KEY (model, revision))""",
)
_COLUMNS = ("id", "decision_id", "model", "tenant", "gate", "state", "priority", "queued_ns",
            "decided_ns", "action", "source", "chained", "announced", "revision", "doc")


@dataclass(frozen=True)
class GateRevision:
    """One model's review settings as of a revision (0: the configured ones)."""

    model: str
    revision: int
    doc: dict[str, Any]
    who: str = ""
    reason: str = ""
    time_ns: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "revision": self.revision, "settings": self.doc,
                "who": self.who, "reason": self.reason, "time_ns": self.time_ns}


@dataclass(frozen=True)
class Stats:
    """The queue at a glance."""

    open_by_gate: dict[str, int]
    oldest_open_ns: dict[str, int]      # per gate: when its oldest open item was queued
    decided_by_action: dict[str, int]
    decision_seconds: list[float]       # queued → decided, the latest decided items


class ReviewStore(Protocol):
    """What the sidecar and the gateway need of a review store."""

    def add(self, items: list[Item]) -> None: ...
    def get(self, review_id: str) -> Item | None: ...
    def by_decision(self, decision_id: str) -> list[Item]: ...
    def items(self, state: str | None, gate: str | None, model: str | None,
              limit: int, now_ns: int, tenant: str | None = None) -> list[Item]: ...
    def change(self, review_id: str, step: Callable[[Item], Item]) -> Item: ...
    def unfinished(self, source: str, limit: int) -> list[Item]: ...
    def stats(self, now_ns: int) -> Stats: ...
    def gates(self, model: str) -> GateRevision | None: ...
    def all_gates(self) -> dict[str, GateRevision]: ...
    def set_gates(self, change: GateRevision, base: int) -> None: ...
    def close(self) -> None: ...


def _row(item: Item) -> tuple[Any, ...]:
    doc = item.to_store()
    return (item.id, item.decision_id, item.model, item.tenant, item.gate, item.state,
            item.priority, item.queued_ns, item.decided_ns, item.action, item.source,
            int(item.chained), int(item.announced), item.revision,
            json.dumps(doc, separators=(",", ":")))


def _item(row: Any) -> Item:
    doc = json.loads(row[-1])
    doc["revision"] = int(row[-2])
    return Item.from_store(doc)


class SqlReviewStore:
    """The SQL both engines run; subclasses connect and name their errors."""

    placeholder = "?"
    unreachable: tuple[type[Exception], ...] = ()
    duplicate: tuple[type[Exception], ...] = ()
    # A connection idle this long is pinged before use (None: never; a file needs none).
    ping_after_idle_s: float | None = None

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._db: Any = None
        self._used_at = 0.0
        with self._session() as db:
            self._make_tables(db)

    def _connect(self) -> Any:
        raise NotImplementedError

    def _make_tables(self, db: Any) -> None:
        for statement in _TABLES:
            db.execute(statement)
        db.commit()

    def _sql(self, text: str) -> str:
        return text.replace("?", self.placeholder)

    @contextmanager
    def _session(self) -> Iterator[Any]:
        """The connection, one caller at a time; committed after, rolled back on error."""
        with self._lock:
            self._check_idle()
            try:
                if self._db is None:
                    self._db = self._connect()
                yield self._db
                self._db.commit()
                self._used_at = time.monotonic()
            except self.unreachable as exc:
                self._drop()
                raise StoreUnavailable(f"review store unavailable: {exc}") from exc
            except BaseException:
                if self._db is not None:
                    try:
                        self._db.rollback()
                    except self.unreachable:
                        self._drop()
                raise

    def _check_idle(self) -> None:
        """Drop a connection that went dead while idle (the server restarted): a ping
        fails where nothing was sent yet, so the caller's statements go to a new one."""
        idle = self.ping_after_idle_s
        if self._db is None or idle is None or time.monotonic() - self._used_at < idle:
            return
        try:
            self._db.execute("SELECT 1")
            self._db.commit()
        except self.unreachable:
            self._drop()

    def _drop(self) -> None:
        try:
            if self._db is not None:
                self._db.close()
        except self.unreachable:
            pass
        self._db = None

    def _all(self, db: Any, text: str, args: tuple[Any, ...] = ()) -> list[Any]:
        return list(db.execute(self._sql(text), args).fetchall())

    def add(self, items: list[Item]) -> None:
        """Queue ``items`` (one already there, by id, is left as it is)."""
        if not items:
            return
        marks = ", ".join("?" * len(_COLUMNS))
        with self._session() as db:
            cur = db.cursor()
            cur.executemany(self._sql(
                f"INSERT INTO aios_reviews ({', '.join(_COLUMNS)}) VALUES ({marks}) "
                "ON CONFLICT (id) DO NOTHING"), [_row(i) for i in items])

    def get(self, review_id: str) -> Item | None:
        with self._session() as db:
            rows = self._all(db, f"SELECT {', '.join(_COLUMNS)} FROM aios_reviews "
                             "WHERE id = ?", (review_id,))
        return _item(rows[0]) if rows else None

    def by_decision(self, decision_id: str) -> list[Item]:
        with self._session() as db:
            rows = self._all(db, f"SELECT {', '.join(_COLUMNS)} FROM aios_reviews "
                             "WHERE decision_id = ? ORDER BY queued_ns", (decision_id,))
        return [_item(r) for r in rows]

    def items(self, state: str | None, gate: str | None, model: str | None, limit: int,
              now_ns: int, tenant: str | None = None) -> list[Item]:
        """Items in review order (most urgent first, then oldest); ``state`` None: the
        open ones (pending or claimed); ``tenant``: that tenant's alone."""
        where, args = ["state <> 'decided'" if state in (None, "pending", "claimed")
                       else "state = 'decided'"], []
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        for column, value in (("gate", gate), ("model", model)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        order = "decided_ns DESC" if state == "decided" else "priority DESC, queued_ns"
        # A claim past its lease is pending: the state asked for is read off each item.
        fetch = limit if state in (None, "decided") else limit * 4 + 100
        with self._session() as db:
            rows = self._all(db, f"SELECT {', '.join(_COLUMNS)} FROM aios_reviews WHERE "
                             f"{' AND '.join(where)} ORDER BY {order} LIMIT ?",
                             (*args, fetch))
        out = [_item(r) for r in rows]
        if state in ("pending", "claimed"):
            out = [i for i in out if i.state_at(now_ns) == state]
        return out[:limit]

    def change(self, review_id: str, step: Callable[[Item], Item]) -> Item:
        """Apply ``step`` to the item as it is, if nobody changed it meanwhile (else on
        what is there then); the item as changed. NotFound, or what ``step`` raises."""
        for _ in range(MAX_COMPARE_AND_SET):
            item = self.get(review_id)
            if item is None:
                raise NotFound(f"no review {review_id!r}")
            changed = step(item)
            with self._session() as db:
                cur = db.execute(self._sql(
                    "UPDATE aios_reviews SET state = ?, priority = ?, decided_ns = ?, "
                    "action = ?, chained = ?, announced = ?, doc = ?, revision = ? "
                    "WHERE id = ? AND revision = ?"),
                    (changed.state, changed.priority, changed.decided_ns, changed.action,
                     int(changed.chained), int(changed.announced), _row(changed)[-1],
                     item.revision + 1, review_id, item.revision))
                if cur.rowcount == 1:
                    return Item.from_store({**changed.to_store(),
                                            "revision": item.revision + 1})
        raise Conflict(f"review {review_id} kept changing: try again")

    def unfinished(self, source: str, limit: int) -> list[Item]:
        """Decided items of ``source`` whose record or event is still to go out."""
        with self._session() as db:
            rows = self._all(db, f"SELECT {', '.join(_COLUMNS)} FROM aios_reviews "
                             "WHERE source = ? AND announced = 0 AND state = 'decided' "
                             "ORDER BY decided_ns LIMIT ?", (source, limit))
        return [_item(r) for r in rows]

    def stats(self, now_ns: int) -> Stats:
        with self._session() as db:
            open_rows = self._all(db, "SELECT gate, COUNT(*), MIN(queued_ns) FROM "
                                  "aios_reviews WHERE state <> 'decided' GROUP BY gate")
            decided = self._all(db, "SELECT action, COUNT(*) FROM aios_reviews WHERE "
                                "state = 'decided' GROUP BY action")
            latest = self._all(db, "SELECT decided_ns - queued_ns FROM aios_reviews WHERE "
                               "state = 'decided' ORDER BY decided_ns DESC LIMIT 10000")
        return Stats({g: int(n) for g, n, _ in open_rows},
                     {g: int(t) for g, _, t in open_rows},
                     {a: int(n) for a, n in decided},
                     [int(d) / 1e9 for (d,) in latest])

    def gates(self, model: str) -> GateRevision | None:
        with self._session() as db:
            rows = self._all(db, "SELECT model, revision, doc, who, reason, time_ns FROM "
                             "aios_review_gates WHERE model = ? ORDER BY revision DESC "
                             "LIMIT 1", (model,))
        return _gates(rows[0]) if rows else None

    def all_gates(self) -> dict[str, GateRevision]:
        """Every model's latest gates revision."""
        with self._session() as db:
            rows = self._all(db, "SELECT g.model, g.revision, g.doc, g.who, g.reason, "
                             "g.time_ns FROM aios_review_gates g JOIN (SELECT model, "
                             "MAX(revision) AS r FROM aios_review_gates GROUP BY model) m "
                             "ON g.model = m.model AND g.revision = m.r")
        return {r[0]: _gates(r) for r in rows}

    def set_gates(self, change: GateRevision, base: int) -> None:
        """Add ``change`` (revision ``base`` + 1); Conflict unless ``base`` is the latest."""
        current = self.gates(change.model)
        if (current.revision if current else 0) != base:
            raise Conflict(f"review gates of {change.model} are at revision "
                           f"{current.revision if current else 0}, not {base}: read them "
                           "again and base the change on that")
        try:
            with self._session() as db:
                db.execute(self._sql(
                    "INSERT INTO aios_review_gates (model, revision, doc, who, reason, "
                    "time_ns) VALUES (?, ?, ?, ?, ?, ?)"),
                    (change.model, base + 1, json.dumps(change.doc, sort_keys=True),
                     change.who, change.reason, change.time_ns))
        except self.duplicate as exc:
            raise Conflict(f"review gates of {change.model} changed meanwhile (revision "
                           f"{base + 1} exists): read them again") from exc

    def close(self) -> None:
        with self._lock:
            self._drop()


def _gates(row: Any) -> GateRevision:
    return GateRevision(str(row[0]), int(row[1]), json.loads(row[2]), str(row[3]),
                        str(row[4]), int(row[5]))


class SqliteReviewStore(SqlReviewStore):
    """A SQLite file (WAL: the gateway reads while the sidecar writes)."""

    unreachable = (sqlite3.OperationalError,)
    duplicate = (sqlite3.IntegrityError,)

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=TIMEOUT_S, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a queued item survives a power cut
        return db


class PostgresReviewStore(SqlReviewStore):
    """A PostgreSQL database shared by the fleet."""

    placeholder = "%s"
    unreachable = (psycopg.OperationalError, psycopg.InterfaceError)
    duplicate = (psycopg.errors.UniqueViolation,)
    ping_after_idle_s = PING_AFTER_IDLE_S

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__()

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, connect_timeout=int(TIMEOUT_S),
                               options=f"-c statement_timeout={int(TIMEOUT_S * 1000)}")

    def _make_tables(self, db: Any) -> None:
        make_table(db, *_TABLES)


def open_review_store(url: str) -> SqlReviewStore:
    """The store at ``url``: ``postgresql://…``, else a SQLite file path."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresReviewStore(url)
    return SqliteReviewStore(Path(url.removeprefix("sqlite:///")))
