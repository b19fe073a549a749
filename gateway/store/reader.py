"""The store read by someone other than its writer: `meter-gateway status`, and the daemon's own
figures for the status page, MQTT and /metrics.

Invariants:
- It never writes and never blocks the writer. It opens the file read-only (`mode=ro`) and
  `query_only`; in WAL mode a reader does not hold up appends, and each `snapshot()` is one
  short read transaction. A busy database waits `BUSY_TIMEOUT_MS` at most.
- It leaves no file behind: when the writer is not running (no `-wal` file beside the
  database, so everything is in the main file) it opens `immutable=1`, which creates no
  `-wal`/`-shm` (a root-owned `-shm` left by `status` run as root would stop the daemon's
  user from opening its own store).
- It knows the store's tables (gateway.store.database), not what any uplink means by them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gateway.store.database import Backlog, wal_bytes

#: The reader's page cache (SQLite's default is 2 MB): its queries walk an index once.
CACHE_KIB = 256
#: A reader waits this long at most for a lock (WAL readers almost never need to).
BUSY_TIMEOUT_MS = 250


class StoreMissing(Exception):
    """There is no database file (yet) at the path."""


@dataclass(frozen=True, slots=True)
class StreamCursor:
    """One uplink stream's cursor as stored: the id of the last sample it has passed."""

    uplink: str
    stream: str
    meter: str
    position: int


class StoreReader:
    """A read-only view of one store file, for one thread at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreMissing(f"no store at {self.path}")
        self.writer_running = Path(f"{self.path}-wal").exists()
        options = "mode=ro" if self.writer_running else "mode=ro&immutable=1"
        uri = f"file:{quote(str(self.path.resolve()))}?{options}"
        self._db = sqlite3.connect(
            uri,
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
        self._db.execute("PRAGMA query_only=ON")
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def snapshot(self) -> Iterator[StoreReader]:
        """One read transaction: every figure read inside agrees with the others."""
        self._db.execute("BEGIN")
        try:
            yield self
        finally:
            self._db.execute("COMMIT")

    def has_table(self, name: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    def used_bytes(self) -> int:
        """Bytes in use (pages less free pages), as the store counts against its budget."""
        page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * page_size + wal_bytes(self.path)

    def newest_samples(self) -> dict[str, int]:
        """meter -> its newest stored sample time (UTC ms), for every meter ever stored."""
        if not self.has_table("meters"):
            return {}
        rows = self._db.execute("SELECT meter, last_ts_ms FROM meters").fetchall()
        return {str(meter): int(ts_ms) for meter, ts_ms in rows}

    def newest_id(self) -> int:
        row = self._db.execute("SELECT MAX(id) FROM samples").fetchone()
        return int(row[0] or 0)

    def cursors(self) -> list[StreamCursor]:
        rows = self._db.execute(
            "SELECT uplink, stream, meter, position FROM cursors ORDER BY uplink, stream"
        ).fetchall()
        return [StreamCursor(str(u), str(s), str(m), int(p)) for u, s, m, p in rows]

    def backlog(self, meter: str, position: int) -> Backlog:
        """Samples of `meter` after `position`; the oldest is the first (per-meter id order
        is time order), found by the index without scanning."""
        (rows,) = self._db.execute(
            "SELECT COUNT(*) FROM samples WHERE meter = ? AND id > ?", (meter, position)
        ).fetchone()
        first = self._db.execute(
            "SELECT ts_ms FROM samples WHERE meter = ? AND id > ? ORDER BY id LIMIT 1",
            (meter, position),
        ).fetchone()
        return Backlog(int(rows), None if first is None else int(first[0]))

    def passed(self, meter: str, after: int, upto: int) -> int:
        """Samples of `meter` with after < id <= upto: what a cursor moved past."""
        if upto <= after:
            return 0
        (rows,) = self._db.execute(
            "SELECT COUNT(*) FROM samples WHERE meter = ? AND id > ? AND id <= ?",
            (meter, after, upto),
        ).fetchone()
        return int(rows)

    def dead_letters(self) -> dict[tuple[str, str], int]:
        """(uplink, stream) -> items parked and not re-queued."""
        rows = self._db.execute(
            "SELECT uplink, stream, COUNT(*) FROM dead_letters WHERE requeued_at_ms IS NULL "
            "GROUP BY uplink, stream"
        ).fetchall()
        return {(str(uplink), str(stream)): int(count) for uplink, stream, count in rows}

    def query(self, sql: str, parameters: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query (an ops or uplink table; values as SQLite gives them)."""
        return [tuple(row) for row in self._db.execute(sql, parameters).fetchall()]
