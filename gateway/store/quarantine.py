"""Sample rows whose stored payload no longer decodes (bit rot on an SD card that
`PRAGMA quick_check` does not see): moved out of `samples` into `quarantine`, counted and
alerted, so that the streams reading that meter go on instead of crash-looping on one row.

Invariants:
- A row is quarantined only when decoding it raised (or gave no mapping): a row that decodes
  is never touched. The raw stored bytes are kept as they were (evidence; recoverable by hand).
- Moving is one transaction (INSERT into quarantine, DELETE from samples): after any crash the
  row is in exactly one of the two tables. Cursors need no change: ids are never reused.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

from core.sample import StoredSample

log = logging.getLogger(__name__)

DDL = """
CREATE TABLE IF NOT EXISTS quarantine (
    sample_id INTEGER PRIMARY KEY,
    meter TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    vals BLOB,
    flags TEXT,
    reason TEXT NOT NULL,
    quarantined_at_ms INTEGER NOT NULL
)
"""

Row = tuple[int, str, int, str, str | None]


def move(db: sqlite3.Connection, row: Row, reason: str) -> str:
    """Quarantine one row (the caller holds the write transaction); what to tell people."""
    sample_id, meter, ts_ms, vals, flags = row
    db.execute(
        "INSERT OR REPLACE INTO quarantine "
        "(sample_id, meter, ts_ms, vals, flags, reason, quarantined_at_ms) "
        "VALUES (?, ?, ?, CAST(? AS BLOB), ?, ?, ?)",
        (sample_id, meter, ts_ms, vals, flags, reason, int(time.time() * 1000)),
    )
    db.execute("DELETE FROM samples WHERE id = ?", (sample_id,))
    return (
        f"stored sample {sample_id} of meter {meter} no longer decodes ({reason}): moved to "
        f"quarantine ({count(db)} in all); its streams go on without it"
    )


def malformed(db: sqlite3.Connection, meter: str, start_ms: int, end_ms: int) -> list[Row]:
    """Rows of `meter` in the time range whose payload is not JSON at all."""
    rows = db.execute(
        "SELECT id, meter, ts_ms, vals, flags FROM samples WHERE meter = ? "
        "AND ts_ms BETWEEN ? AND ? AND NOT json_valid(vals)",
        (meter, start_ms, end_ms),
    ).fetchall()
    return [tuple(row) for row in rows]


def decode_or_none(decode: Callable[[Row], StoredSample], row: Row) -> StoredSample | str:
    """The decoded row, or why it does not decode."""
    try:
        stored = decode(row)
    except Exception as exc:  # whatever the bytes make the decoder raise
        return f"{type(exc).__name__}: {exc}"[:300]
    if not hasattr(stored.sample.values, "items"):
        return f"values are a {type(stored.sample.values).__name__}, not a mapping"
    return stored


def count(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0])
