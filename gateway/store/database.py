"""The durable queue between meters and clouds: one SQLite database in WAL mode.

Invariants (every change to this module must keep them):
1. `samples` is append-only. Its `id` (AUTOINCREMENT, never reused even after deletes) is the
   arrival order. Per meter it is also time order: a sample whose `ts_ms` is not newer than
   that meter's newest stored one is refused and counted, never stored.
2. `append` returns only after COMMIT with `synchronous=FULL`: a sample reported stored
   survives kill -9 and power loss.
3. Each uplink stream owns one cursor: the id of the last sample it has fully delivered. A
   cursor only moves forward, and moves in the same transaction as the uplink state,
   dead-letter row or uplink-owned rows that go with it (`advance(..., write=)`, `park`,
   `transaction()`): after any crash, an uplink's own records agree with its cursor.
4. A sample is deleted only when every registered stream that reads its meter is past it AND
   it is older than the retention window (look-back for hourly/monthly derivations).
5. When the database reaches its disk budget, new samples are refused (StoreFull) and the
   caller alerts; undelivered data is never deleted to make room.

The store knows samples, cursors, dead letters and each uplink's key-value state, nothing of
any particular uplink: an uplink that needs tables of its own creates them (`ensure_tables`)
and writes them through a `Transaction` (gateway.uplinks.enerkey.delivered,
gateway.uplinks.pts.ledger).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from core.sample import Sample, StoredSample

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    meter TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    vals TEXT NOT NULL,
    flags TEXT
);
CREATE INDEX IF NOT EXISTS samples_by_meter ON samples (meter, id);
CREATE TABLE IF NOT EXISTS meters (
    meter TEXT PRIMARY KEY,
    last_ts_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    uplink TEXT NOT NULL,
    stream TEXT NOT NULL,
    meter TEXT NOT NULL,
    position INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (uplink, stream)
);
CREATE TABLE IF NOT EXISTS uplink_state (
    uplink TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (uplink, key)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uplink TEXT NOT NULL,
    stream TEXT NOT NULL,
    sample_id INTEGER NOT NULL,
    payload TEXT NOT NULL,
    status INTEGER,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    parked_at_ms INTEGER NOT NULL,
    requeued_at_ms INTEGER
);
"""

#: Response bodies kept in the dead-letter table are cut to this many characters.
MAX_BODY_CHARS = 4000


class StoreFull(Exception):
    """The disk budget is reached: the sample was not stored. Nothing was deleted."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    uplink: str
    stream: str
    sample_id: int
    payload: str
    status: int | None
    body: str
    attempts: int
    parked_at_ms: int
    requeued_at_ms: int | None


@dataclass(frozen=True, slots=True)
class Backlog:
    rows: int
    oldest_ts_ms: int | None


class Transaction:
    """An open write transaction of a Store (`Store.transaction()`); valid inside its block."""

    def __init__(self, store: Store, db: sqlite3.Connection) -> None:
        self._store = store
        self.db = db

    def advance(self, uplink: str, stream: str, position: int) -> None:
        self._store._advance(self.db, uplink, stream, position)

    def state(self, uplink: str, key: str) -> str | None:
        return _state(self.db, uplink, key)

    def put_state(self, uplink: str, values: Mapping[str, str]) -> None:
        self._store._put_state(self.db, uplink, values)

    def execute(self, sql: str, parameters: Sequence[object] = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, parameters)

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> sqlite3.Cursor:
        return self.db.executemany(sql, rows)


class Store:
    """Synchronous store, for one thread at a time (AsyncStore gives it a thread of its own)."""

    def __init__(self, path: str | Path, *, budget_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.budget_bytes = budget_bytes
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        self._page_size: int = self._db.execute("PRAGMA page_size").fetchone()[0]
        self._last_ts: dict[str, int] = dict(
            self._db.execute("SELECT meter, last_ts_ms FROM meters").fetchall()
        )
        #: Each meter's newest sample id: whether a reader has anything new, without a query.
        newest = "SELECT COALESCE(MAX(id), 0) FROM samples WHERE meter = ?"
        self._last_id = {m: self._db.execute(newest, (m,)).fetchone()[0] for m in self._last_ts}
        #: Grows when dead letters may have been re-queued, here or by another connection (the
        #: CLI; `read` notices it by PRAGMA data_version): uplinks look only when it changed.
        self.requeue_generation = 0
        self._data_version: int = self._db.execute("PRAGMA data_version").fetchone()[0]
        self._streams: dict[tuple[str, str], str] = {}
        self._ensured: set[str] = set()
        self.refused_older: dict[str, int] = {}
        self.full = False

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Checkpoint and close; safe to call twice."""
        if self._db is None:
            return
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            log.debug("checkpoint at close failed", exc_info=True)
        self._db.close()
        self._db = None  # type: ignore[assignment]

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One write transaction (BEGIN IMMEDIATE .. COMMIT; rolled back on any error) for an
        uplink's own rows together with its cursor and state (invariant 3)."""
        with self._transaction() as db:
            yield Transaction(self, db)

    def ensure_tables(self, ddl: str) -> None:
        """Create an uplink's own tables and indexes (`CREATE ... IF NOT EXISTS` statements);
        a no-op after the first call with the same `ddl` on this Store."""
        if ddl in self._ensured:
            return
        with self._transaction() as db:
            for statement in ddl.split(";"):
                if statement.strip():
                    db.execute(statement)
        self._ensured.add(ddl)

    # -- ingest ----------------------------------------------------------------------------

    def used_bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self._page_size)

    def append(self, samples: Sequence[Sample]) -> list[int | None]:
        """Store samples in one transaction; return each one's id, or None if refused as older.

        Raises StoreFull (storing nothing) when the disk budget is reached.
        """
        if self.budget_bytes is not None and self.used_bytes() >= self.budget_bytes:
            if not self.full:
                log.error(
                    "store %s reached its disk budget of %d bytes: new samples are REFUSED "
                    "until uplinks deliver the backlog or the budget is raised",
                    self.path,
                    self.budget_bytes,
                )
            self.full = True
            raise StoreFull(f"disk budget of {self.budget_bytes} bytes reached")
        if self.full:
            log.warning("store %s is below its disk budget again: accepting samples", self.path)
            self.full = False
        ids: list[int | None] = []
        last_ts = dict(self._last_ts)
        rows: list[tuple[str, int, str, str | None]] = []
        accepted: list[int] = []
        for index, sample in enumerate(samples):
            previous = last_ts.get(sample.meter)
            if previous is not None and sample.ts_ms <= previous:
                self.refused_older[sample.meter] = self.refused_older.get(sample.meter, 0) + 1
                ids.append(None)
                continue
            last_ts[sample.meter] = sample.ts_ms
            rows.append(
                (
                    sample.meter,
                    sample.ts_ms,
                    orjson.dumps(dict(sample.values)).decode(),
                    ",".join(sorted(sample.flags)) if sample.flags else None,
                )
            )
            accepted.append(index)
            ids.append(None)
        if not rows:
            return ids
        changed = {m: ts for m, ts in last_ts.items() if self._last_ts.get(m) != ts}
        with self._transaction() as db:
            first = db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name='samples'"
            ).fetchone()[0]
            db.executemany(
                "INSERT INTO samples (meter, ts_ms, vals, flags) VALUES (?, ?, ?, ?)", rows
            )
            db.executemany(
                "INSERT INTO meters (meter, last_ts_ms) VALUES (?, ?) "
                "ON CONFLICT (meter) DO UPDATE SET last_ts_ms = excluded.last_ts_ms",
                changed.items(),
            )
        # AUTOINCREMENT with one writer: the batch got consecutive ids after the old maximum.
        for offset, index in enumerate(accepted, start=1):
            ids[index] = first + offset
            self._last_id[samples[index].meter] = first + offset
        self._last_ts = last_ts
        return ids

    def last_ts(self, meter: str) -> int | None:
        return self._last_ts.get(meter)

    def last_id(self, meter: str) -> int:
        """The id of `meter`'s newest stored sample (0: none), from memory."""
        return int(self._last_id.get(meter, 0))

    # -- reading ---------------------------------------------------------------------------

    def read(self, meter: str, after_id: int, limit: int = 500) -> list[StoredSample]:
        self._notice_outside_writes()
        rows = self._db.execute(
            "SELECT id, meter, ts_ms, vals, flags FROM samples "
            "WHERE meter = ? AND id > ? ORDER BY id LIMIT ?",
            (meter, after_id, limit),
        ).fetchall()
        return [_stored(row) for row in rows]

    def _notice_outside_writes(self) -> None:
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._data_version = version
            self.requeue_generation += 1

    def read_all(self, after_id: int = 0, limit: int = 1000) -> list[StoredSample]:
        rows = self._db.execute(
            "SELECT id, meter, ts_ms, vals, flags FROM samples WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [_stored(row) for row in rows]

    def read_time_range(self, meter: str, start_ms: int, end_ms: int) -> list[StoredSample]:
        """Samples of one meter with start_ms <= ts_ms <= end_ms, in time order (look-back)."""
        rows = self._db.execute(
            "SELECT id, meter, ts_ms, vals, flags FROM samples "
            "WHERE meter = ? AND ts_ms BETWEEN ? AND ? ORDER BY id",
            (meter, start_ms, end_ms),
        ).fetchall()
        return [_stored(row) for row in rows]

    def find_sample(
        self,
        meter: str,
        start_ms: int,
        end_ms: int,
        *,
        channel: str | None = None,
        last: bool = False,
    ) -> StoredSample | None:
        """The first (or, with `last`, the newest) sample of `meter` with
        start_ms <= ts_ms <= end_ms that carries a number in `channel` (any sample if None).
        """
        query = "SELECT id, meter, ts_ms, vals, flags FROM samples WHERE meter = ? "
        query += "AND ts_ms BETWEEN ? AND ? "
        args: list[object] = [meter, start_ms, end_ms]
        if channel is not None:
            if '"' in channel or "\\" in channel:
                raise ValueError(f"bad channel name {channel!r}")
            query += "AND json_type(vals, ?) IN ('integer', 'real') "
            args.append(f'$."{channel}"')
        query += f"ORDER BY id {'DESC' if last else 'ASC'} LIMIT 1"
        row = self._db.execute(query, args).fetchone()
        return None if row is None else _stored(row)

    def query(self, sql: str, parameters: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query, for an uplink's own tables (values as SQLite gives them)."""
        return [tuple(row) for row in self._db.execute(sql, parameters).fetchall()]

    def count(self, meter: str | None = None) -> int:
        if meter is None:
            return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
        return int(
            self._db.execute("SELECT COUNT(*) FROM samples WHERE meter = ?", (meter,)).fetchone()[0]
        )

    # -- cursors ---------------------------------------------------------------------------

    def register_stream(self, uplink: str, stream: str, meter: str) -> int:
        """Declare that `uplink` delivers `meter`'s samples as `stream`; return its cursor.

        Only streams registered in this process hold back retention, so an uplink removed
        from config stops pinning data, while its cursor is kept should it come back.
        """
        with self._transaction() as db:
            db.execute(
                "INSERT INTO cursors (uplink, stream, meter) VALUES (?, ?, ?) "
                "ON CONFLICT (uplink, stream) DO UPDATE SET meter = excluded.meter",
                (uplink, stream, meter),
            )
        self._streams[(uplink, stream)] = meter
        return self.cursor(uplink, stream)

    def cursor(self, uplink: str, stream: str) -> int:
        row = self._db.execute(
            "SELECT position FROM cursors WHERE uplink = ? AND stream = ?", (uplink, stream)
        ).fetchone()
        return int(row[0]) if row else 0

    def advance(
        self,
        uplink: str,
        stream: str,
        position: int,
        state: Mapping[str, str] | None = None,
        *,
        write: Callable[[Transaction], None] | None = None,
    ) -> None:
        """Move a cursor forward (never back) together with the uplink's own state and, with
        `write`, whatever rows of its own it writes in the same transaction."""
        with self.transaction() as txn:
            txn.advance(uplink, stream, position)
            if state:
                txn.put_state(uplink, state)
            if write is not None:
                write(txn)

    def advance_many(
        self, uplink: str, rows: Sequence[tuple[str, int, Mapping[str, str] | None]]
    ) -> None:
        """Move several streams' cursors (each with its own state) in ONE transaction: an
        uplink's group commit costs one fsync, however many streams it has."""
        with self._transaction() as db:
            for stream, position, state in rows:
                self._advance(db, uplink, stream, position)
                if state:
                    self._put_state(db, uplink, state)

    def _advance(self, db: sqlite3.Connection, uplink: str, stream: str, position: int) -> None:
        updated = db.execute(
            "UPDATE cursors SET position = MAX(position, ?) WHERE uplink = ? AND stream = ?",
            (position, uplink, stream),
        ).rowcount
        if updated != 1:
            raise KeyError(f"stream {uplink}/{stream} is not registered")

    def backlog(self, uplink: str, stream: str) -> Backlog:
        meter = self._streams.get((uplink, stream))
        if meter is None:
            return Backlog(0, None)
        position = self.cursor(uplink, stream)
        rows, oldest = self._db.execute(
            "SELECT COUNT(*), MIN(ts_ms) FROM samples WHERE meter = ? AND id > ?",
            (meter, position),
        ).fetchone()
        return Backlog(int(rows), oldest)

    # -- uplink state ----------------------------------------------------------------------

    def state(self, uplink: str, key: str) -> str | None:
        return _state(self._db, uplink, key)

    def put_state(self, uplink: str, values: Mapping[str, str]) -> None:
        with self._transaction() as db:
            self._put_state(db, uplink, values)

    @staticmethod
    def _put_state(db: sqlite3.Connection, uplink: str, values: Mapping[str, str]) -> None:
        db.executemany(
            "INSERT INTO uplink_state (uplink, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (uplink, key) DO UPDATE SET value = excluded.value",
            [(uplink, key, value) for key, value in values.items()],
        )

    # -- dead letters ----------------------------------------------------------------------

    def park(
        self,
        uplink: str,
        stream: str,
        sample_id: int,
        *,
        payload: str,
        status: int | None,
        body: str,
        attempts: int,
        now_ms: int,
        state: Mapping[str, str] | None = None,
    ) -> int:
        """Move one undeliverable item aside and advance past it (with the uplink's `state`,
        when given), in one transaction.
        """
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO dead_letters "
                "(uplink, stream, sample_id, payload, status, body, attempts, parked_at_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    uplink,
                    stream,
                    sample_id,
                    payload,
                    status,
                    body[:MAX_BODY_CHARS],
                    attempts,
                    now_ms,
                ),
            )
            self._advance(db, uplink, stream, sample_id)
            if state:
                self._put_state(db, uplink, state)
        return int(cursor.lastrowid or 0)

    def dead_letters(
        self, uplink: str | None = None, *, include_requeued: bool = False
    ) -> list[DeadLetter]:
        query = "SELECT * FROM dead_letters WHERE (? IS NULL OR uplink = ?)"
        if not include_requeued:
            query += " AND requeued_at_ms IS NULL"
        rows = self._db.execute(query + " ORDER BY id", (uplink, uplink)).fetchall()
        return [DeadLetter(*row) for row in rows]

    def requeue(
        self,
        uplink: str,
        *,
        ids: Sequence[int] | None = None,
        stream: str | None = None,
        now_ms: int,
    ) -> list[DeadLetter]:
        """Mark parked items of `uplink` (all, those of `stream`, or those with `ids`) to be
        sent again by the running uplink; returns what was marked."""
        query = "SELECT * FROM dead_letters WHERE uplink = ? AND requeued_at_ms IS NULL"
        params: list[object] = [uplink]
        if stream is not None:
            query += " AND stream = ?"
            params.append(stream)
        if ids is not None:
            query += f" AND id IN ({','.join('?' * len(ids))})"
            params.extend(ids)
        with self._transaction() as db:
            rows = [DeadLetter(*row) for row in db.execute(query + " ORDER BY id", params)]
            db.executemany(
                "UPDATE dead_letters SET requeued_at_ms = ? WHERE id = ?",
                [(now_ms, row.id) for row in rows],
            )
        self.requeue_generation += 1
        return rows

    def requeued_letters(self, uplink: str, stream: str) -> list[DeadLetter]:
        """Items an operator re-queued for `stream`, oldest sample first."""
        rows = self._db.execute(
            "SELECT * FROM dead_letters WHERE uplink = ? AND stream = ? "
            "AND requeued_at_ms IS NOT NULL ORDER BY sample_id, id",
            (uplink, stream),
        ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def repark(
        self, letter_id: int, *, status: int | None, body: str, attempts: int, now_ms: int
    ) -> None:
        """A re-queued item refused again: parked once more, with the new answer."""
        with self._transaction() as db:
            db.execute(
                "UPDATE dead_letters SET requeued_at_ms = NULL, status = ?, body = ?, "
                "attempts = attempts + ?, parked_at_ms = ? WHERE id = ?",
                (status, body[:MAX_BODY_CHARS], attempts, now_ms, letter_id),
            )

    def forget_dead_letter(self, letter_id: int) -> None:
        """A re-queued item was delivered: it leaves the table."""
        with self._transaction() as db:
            db.execute("DELETE FROM dead_letters WHERE id = ?", (letter_id,))

    def dead_letter_count(self, uplink: str) -> int:
        return int(
            self._db.execute(
                "SELECT COUNT(*) FROM dead_letters WHERE uplink = ? AND requeued_at_ms IS NULL",
                (uplink,),
            ).fetchone()[0]
        )

    # -- retention -------------------------------------------------------------------------

    def prune(self, now_ms: int, retention_ms: int, *, batch: int = 5000) -> int:
        """Delete samples every registered stream has delivered and retention no longer needs."""
        horizon = now_ms - retention_ms
        positions: dict[str, list[int]] = {}
        for (uplink, stream), meter in self._streams.items():
            positions.setdefault(meter, []).append(self.cursor(uplink, stream))
        deleted = 0
        for meter in list(self._last_ts):
            limit = min(positions[meter]) if meter in positions else None
            while True:
                with self._transaction() as db:
                    count = db.execute(
                        "DELETE FROM samples WHERE id IN (SELECT id FROM samples "
                        "WHERE meter = ? AND (? IS NULL OR id <= ?) AND ts_ms < ? "
                        "ORDER BY id LIMIT ?)",
                        (meter, limit, limit, horizon, batch),
                    ).rowcount
                deleted += count
                if count < batch:
                    break
        return deleted


def _state(db: sqlite3.Connection, uplink: str, key: str) -> str | None:
    row = db.execute(
        "SELECT value FROM uplink_state WHERE uplink = ? AND key = ?", (uplink, key)
    ).fetchone()
    return str(row[0]) if row else None


def _stored(row: tuple[int, str, int, str, str | None]) -> StoredSample:
    sample_id, meter, ts_ms, vals, flags = row
    return StoredSample(
        sample_id,
        Sample(
            meter, ts_ms, orjson.loads(vals), frozenset(flags.split(",")) if flags else frozenset()
        ),
    )
