"""The durable queue between meters and clouds: one SQLite database in WAL mode.

Invariants (every change to this module must keep them):
1. `samples` is append-only (a row that no longer decodes moves to gateway.store.quarantine).
   Its `id` (AUTOINCREMENT, never reused even after deletes) is the arrival order. Per meter
   it is also time order: a sample whose `ts_ms` is not newer than that meter's newest stored
   one is refused and counted, never stored.
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
from gateway.store import files, quarantine
from gateway.store.dead_letters import DeadLetterTable
from gateway.store.tables import SCHEMA, SCHEMA_VERSION

log = logging.getLogger(__name__)

#: How long a statement waits for another connection's lock before SQLITE_BUSY.
BUSY_TIMEOUT_MS = 5000

#: Room kept in a `-reserve` file beside the database: released when the disk is really full,
#: so that cursors, retention and checkpoints can still write (the uplinks drain); taken again,
#: and samples accepted again, once twice this much is free (docs/storage.md).
RESERVE_BYTES = 1024 * 1024


class StoreFull(Exception):
    """The disk budget is reached: the sample was not stored. Nothing was deleted."""


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


class Store(DeadLetterTable):
    """Synchronous store, for one thread at a time (AsyncStore gives it a thread of its own)."""

    def __init__(self, path: str | Path, *, budget_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.budget_bytes = budget_bytes
        self._db = self._connect()
        with self._transaction():
            for statement in (*SCHEMA.split(";"), quarantine.DDL):
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
        #: Called (on the store thread) with a message when a row is quarantined.
        self.on_quarantine: Callable[[str], object] | None = None
        #: The filesystem was full (SQLITE_FULL): the reserve is released until room is back.
        self.disk_full = False
        self._reserve = files.Reserve(Path(f"{self.path}-reserve"), RESERVE_BYTES)
        self._files = files.identity(self.path)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return db

    def check_files(self) -> str | None:
        """The health pass (gateway.store.files): a -wal/-shm/database file deleted or replaced
        under the running store is checkpointed and reopened; what happened, or None."""
        gone = files.changed(self._files, now := files.identity(self.path))
        if not gone:
            self._files = {k: self._files[k] or v for k, v in now.items()}
            return None
        busy, log_frames, done = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if "database" in gone and (saved := files.rescue(self._db, self.path)) != self.path:
            raise files.StoreUnavailable(
                f"store {self.path} was replaced while running: the "
                f"running store was saved to {saved}; stopping"
            )
        if busy or log_frames != done:
            raise files.StoreUnavailable(
                f"store {self.path}: {', '.join(gone)} deleted while running and the "
                f"checkpoint could not complete ({done} of {log_frames} pages): stopping"
            )
        self.close()
        self._db = self._connect()
        self._files = files.identity(self.path)
        return (
            f"the store's {', '.join(gone)} file(s) were deleted while it ran: {done} page(s) "
            "saved into the database by a checkpoint and the store reopened (do not delete "
            "the store's files while the gateway runs)"
        )

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
        """BEGIN IMMEDIATE .. COMMIT. A real full disk (SQLITE_FULL, which SQLite may already
        have rolled back) is StoreFull, as the budget's is: nothing of it was written."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_FULL:
                raise
            raise StoreFull(f"the disk is full ({exc})") from exc

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
        """Bytes held against the budget: pages in use plus the WAL file (which can be far
        bigger than the database between checkpoints)."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self._page_size) + wal_bytes(self.path)

    def _over_budget(self) -> bool:
        if self.budget_bytes is None or self.used_bytes() < self.budget_bytes:
            return False
        if wal_bytes(self.path):  # what a checkpoint gives back is not "full" (no waiting)
            self._db.execute("PRAGMA busy_timeout=0")
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return self.used_bytes() >= self.budget_bytes

    def append(self, samples: Sequence[Sample]) -> list[int | None]:
        """Store samples in one transaction; return each one's id, or None if refused as older.

        Raises StoreFull (storing nothing) when the disk budget is reached or the disk is
        really full (then the reserve is released: cursors and retention go on writing).
        """
        if self.disk_full and not self._reserve.room_back():
            raise StoreFull("the disk is full (waiting for room to come back)")
        if self._over_budget():
            if not self.full:
                log.error(
                    "store %s reached its disk budget of %d bytes: new samples are REFUSED "
                    "until uplinks deliver the backlog or the budget is raised",
                    self.path,
                    self.budget_bytes,
                )
            self.full = True
            raise StoreFull(f"disk budget of {self.budget_bytes} bytes reached")
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
        try:
            ids = self._insert(rows, changed, accepted, ids)
        except StoreFull:
            self.disk_full = True
            self._reserve.release()  # room for cursors, retention, checkpoints
            if not self.full:
                log.error(
                    "store %s: the disk is full: new samples are REFUSED until space comes "
                    "back (uplinks deliver, retention prunes, or an operator frees space)",
                    self.path,
                )
            self.full = True
            raise
        self.disk_full = False
        if self.full:
            log.warning("store %s has room again: accepting samples again", self.path)
            self.full = False
        self._last_ts = last_ts
        return ids

    def _insert(
        self,
        rows: list[tuple[str, int, str, str | None]],
        changed: dict[str, int],
        accepted: list[int],
        ids: list[int | None],
    ) -> list[int | None]:
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
            self._last_id[rows[offset - 1][0]] = first + offset
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
        return self._decoded(rows)

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
        return self._decoded(rows)

    def read_time_range(self, meter: str, start_ms: int, end_ms: int) -> list[StoredSample]:
        """Samples of one meter with start_ms <= ts_ms <= end_ms, in time order (look-back)."""
        rows = self._db.execute(
            "SELECT id, meter, ts_ms, vals, flags FROM samples "
            "WHERE meter = ? AND ts_ms BETWEEN ? AND ? ORDER BY id",
            (meter, start_ms, end_ms),
        ).fetchall()
        return self._decoded(rows)

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
        try:
            row = self._db.execute(query, args).fetchone()
        except sqlite3.OperationalError as exc:
            if "malformed JSON" not in str(exc):
                raise
            self._quarantine_malformed(meter, start_ms, end_ms)  # then ask again
            row = self._db.execute(query, args).fetchone()
        decoded = [] if row is None else self._decoded([row])
        return decoded[0] if decoded else None

    def _decoded(self, rows: Sequence[quarantine.Row]) -> list[StoredSample]:
        """The rows as samples; one that no longer decodes is quarantined, not returned."""
        out: list[StoredSample] = []
        for row in rows:
            stored = quarantine.decode_or_none(_stored, row)
            if isinstance(stored, str):
                self._quarantine(row, stored)
            else:
                out.append(stored)
        return out

    def _quarantine(self, row: quarantine.Row, reason: str) -> None:
        with self._transaction() as db:
            message = quarantine.move(db, row, reason)
        log.error("store %s: %s", self.path, message)
        if self.on_quarantine is not None:
            self.on_quarantine(message)

    def _quarantine_malformed(self, meter: str, start_ms: int, end_ms: int) -> None:
        for row in quarantine.malformed(self._db, meter, start_ms, end_ms):
            self._quarantine(row, "malformed JSON")

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


def wal_bytes(path: Path) -> int:
    """Size of the store's -wal file (0 when there is none)."""
    try:
        return Path(f"{path}-wal").stat().st_size
    except FileNotFoundError:
        return 0


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
