"""Open the store, and tell a corrupt database from one that is only out of reach.

An SD card that lost power mid-write can leave a file SQLite cannot read. Crash-looping on it
would stop every meter; deleting it would destroy evidence and possibly recoverable data. So a
file that SQLite itself calls corrupt (SQLITE_CORRUPT, SQLITE_NOTADB) or that fails
`PRAGMA quick_check` is moved aside (with its -wal and -shm) under a name that says when and
why, an alert is raised, and a fresh store is started.

Anything else is NOT corruption, and a healthy database with undelivered samples must never be
moved aside for it (docs/storage.md):
- locked by another process (SQLITE_BUSY / SQLITE_LOCKED): wait and retry, saying so, for at
  most `LOCK_WAIT_S`; then StoreUnavailable.
- an I/O error, a read-only file or filesystem, a file that cannot be opened, a full disk:
  StoreUnavailable; `run` exits EXIT_STORE with the reason on stderr, the file untouched.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from gateway.store.database import Store
from gateway.store.files import StoreUnavailable

log = logging.getLogger(__name__)

#: `meter-gateway run` exit status when the store cannot be opened or written (not corrupt).
EXIT_STORE = 3
#: How long a database locked by another process is waited for at start, and between tries.
LOCK_WAIT_S = 60.0
LOCK_RETRY_S = 1.0

_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_LOCKED_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


class CorruptStore(Exception):
    pass


def primary_code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code of an error (extended codes carry it in the low byte)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _check(store: Store) -> None:
    rows = store._db.execute("PRAGMA quick_check").fetchall()
    if rows != [("ok",)]:
        raise CorruptStore("; ".join(str(row[0]) for row in rows[:5]))


def _open(path: Path, budget_bytes: int | None) -> Store:
    """The opened and checked store; CorruptStore, or the sqlite3.Error that is not corruption."""
    try:
        store = Store(path, budget_bytes=budget_bytes)
    except sqlite3.DatabaseError as exc:
        if primary_code(exc) in _CORRUPT_CODES:
            raise CorruptStore(str(exc)) from exc
        raise
    try:
        _check(store)
    except sqlite3.DatabaseError as exc:
        store.close()
        if primary_code(exc) in _CORRUPT_CODES:
            raise CorruptStore(str(exc)) from exc
        raise
    except CorruptStore:
        store.close()
        raise
    return store


def _unavailable(path: Path, exc: sqlite3.Error) -> StoreUnavailable:
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    return StoreUnavailable(
        f"store {path} cannot be opened: {exc} ({name}). It is NOT corrupt and was left as it "
        "is; fix the disk or filesystem (read-only? full? failing card?) and start again"
    )


def open_store_checked(path: Path, *, budget_bytes: int | None) -> tuple[Store, Path | None]:
    """The opened store, and where a corrupt predecessor was moved (None if all was well).

    Raises StoreUnavailable when the file is healthy but out of reach (see the module doc)."""
    deadline = time.monotonic() + LOCK_WAIT_S
    waited = False
    while True:
        try:
            store = _open(path, budget_bytes)
        except CorruptStore as exc:
            reason = str(exc)
            break
        except sqlite3.Error as exc:
            if primary_code(exc) not in _LOCKED_CODES:
                raise _unavailable(path, exc) from exc
            if time.monotonic() >= deadline:
                raise StoreUnavailable(
                    f"store {path} is still locked by another process after {LOCK_WAIT_S:g} s "
                    f"({exc}); find it with `fuser {path}` and stop it, then start again"
                ) from exc
            log.warning(
                "store %s is locked by another process (%s): waiting and retrying, for at "
                "most %g s",
                path,
                exc,
                LOCK_WAIT_S,
            )
            waited = True
            time.sleep(LOCK_RETRY_S)
            continue
        if waited:
            log.warning("store %s is no longer locked: opened", path)
        return store, None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{path}{suffix}")
            if source.exists():
                source.rename(Path(f"{moved}{suffix}"))
    except OSError as exc:
        raise StoreUnavailable(
            f"store {path} is corrupt ({reason}) and cannot be moved aside: {exc}"
        ) from exc
    log.error(
        "store %s is corrupt (%s): moved aside to %s, starting a fresh one", path, reason, moved
    )
    try:
        return Store(path, budget_bytes=budget_bytes), moved
    except sqlite3.Error as exc:
        raise _unavailable(path, exc) from exc
