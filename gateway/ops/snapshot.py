"""The daemon's status document kept in its store, for `meter-gateway status` (another process,
which cannot ask Health): written every `SNAPSHOT_EVERY_S` and once more, marked stopped, at a
clean shutdown. Its `heartbeat_ms` tells `status` whether the daemon is alive.

Invariants:
- One row (`ops_status`, key `status`), replaced in one small transaction on the store's
  thread; a failed write (a full disk) is logged and tried again next time, never raised.
- Readers (gateway.store.reader) read it without writing; an absent table or row, or a row of
  an unknown shape, reads as "no snapshot".
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from gateway.store.reader import StoreReader

log = logging.getLogger(__name__)

SNAPSHOT_EVERY_S = 15.0
#: A heartbeat older than this means the daemon is not running (or hung).
STALE_AFTER_S = 3 * SNAPSHOT_EVERY_S + 5
TABLE = "ops_status"
_DDL = (
    "CREATE TABLE IF NOT EXISTS ops_status "
    "(key TEXT PRIMARY KEY, value TEXT NOT NULL, written_ms INTEGER NOT NULL)"
)


def _write(store: Store, document: str, now_ms: int) -> None:
    store.ensure_tables(_DDL)
    with store.transaction() as txn:
        txn.execute(
            "INSERT INTO ops_status (key, value, written_ms) VALUES ('status', ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "written_ms = excluded.written_ms",
            (document, now_ms),
        )


async def save(astore: AsyncStore, document: dict[str, Any]) -> bool:
    """Write `document` now; False (logged) when the store could not take it."""
    try:
        text = json.dumps(document, separators=(",", ":"), allow_nan=False)
        await astore.run(_write, text, int(time.time() * 1000))
    except (sqlite3.Error, OSError, ValueError) as exc:
        log.warning("status snapshot not saved: %s", exc)
        return False
    return True


async def save_forever(
    astore: AsyncStore,
    build: Callable[[], dict[str, Any]],
    *,
    every_secs: float | None = None,
) -> None:
    """Save `build()` every `every_secs` (default: SNAPSHOT_EVERY_S, read when called, so a
    test can shorten it), until cancelled."""
    while True:
        await save(astore, build())
        await asyncio.sleep(SNAPSHOT_EVERY_S if every_secs is None else every_secs)


def load(reader: StoreReader) -> dict[str, Any] | None:
    """The last saved document, or None."""
    if not reader.has_table(TABLE):
        return None
    rows = reader.query("SELECT value FROM ops_status WHERE key = 'status'")
    if not rows:
        return None
    try:
        document = json.loads(rows[0][0])
    except (TypeError, ValueError):
        return None
    return document if isinstance(document, dict) else None
