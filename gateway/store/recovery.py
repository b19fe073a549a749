"""Open the store, and survive a database file that is corrupt.

An SD card that lost power mid-write can leave a file SQLite cannot read. Crash-looping on it
would stop every meter; deleting it would destroy evidence and possibly recoverable data. So a
file that fails to open or fails `PRAGMA quick_check` is moved aside (with its -wal and -shm)
under a name that says when and why, an alert is raised, and a fresh store is started.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from gateway.store.database import Store

log = logging.getLogger(__name__)


class CorruptStore(Exception):
    pass


def _check(store: Store) -> None:
    rows = store._db.execute("PRAGMA quick_check").fetchall()
    if rows != [("ok",)]:
        raise CorruptStore("; ".join(str(row[0]) for row in rows[:5]))


def open_store_checked(path: Path, *, budget_bytes: int | None) -> tuple[Store, Path | None]:
    """The opened store, and where a corrupt predecessor was moved (None if all was well)."""
    try:
        store = Store(path, budget_bytes=budget_bytes)
    except sqlite3.DatabaseError as exc:
        reason = str(exc)
    else:
        try:
            _check(store)
            return store, None
        except (CorruptStore, sqlite3.DatabaseError) as exc:
            reason = str(exc)
            store.close()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(Path(f"{moved}{suffix}"))
    log.error(
        "store %s is corrupt (%s): moved aside to %s, starting a fresh one", path, reason, moved
    )
    return Store(path, budget_bytes=budget_bytes), moved
