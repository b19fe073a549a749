"""Which hours EnerKey was told it received: the uplink's own table, kept with its cursor.

Invariant: `delivered_hours` has one row per uplink, stream, kind and hour that EnerKey
answered 2xx for, written in the SAME transaction as the stream's cursor and state
(`record_delivery`), so "was this hour pushed?" has the same answer as the cursor after any
crash. Rows go only by the age of their delivery (`keep_ms`), never with samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.store.database import Store, Transaction
from gateway.uplinks.enerkey import inflight

TABLE = """
CREATE TABLE IF NOT EXISTS delivered_hours (
    uplink TEXT NOT NULL,
    stream TEXT NOT NULL,
    kind TEXT NOT NULL,
    hour_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    delivered_at_ms INTEGER NOT NULL,
    PRIMARY KEY (uplink, stream, kind, hour_ms)
);
"""


def ensure_table(store: Store) -> None:
    store.ensure_tables(TABLE)


def record_delivery(
    store: Store,
    uplink: str,
    stream: str,
    position: int,
    *,
    kind: str,
    hours: Sequence[tuple[int, float]],
    now_ms: int,
    state: Mapping[str, str] | None = None,
    keep_ms: int | None = None,
) -> None:
    """Advance a cursor, record the (hour_ms, value) pairs just delivered and the uplink's
    state, in ONE transaction, which also removes the stream's in-flight record
    (gateway.uplinks.enerkey.inflight); rows of this stream delivered more than `keep_ms` ago go.

    An hour recorded again (an idempotent re-push) keeps one row with the newest value.
    """

    def write(txn: Transaction) -> None:
        txn.executemany(
            "INSERT INTO delivered_hours "
            "(uplink, stream, kind, hour_ms, value, delivered_at_ms) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (uplink, stream, kind, hour_ms) DO UPDATE SET "
            "value = excluded.value, delivered_at_ms = excluded.delivered_at_ms",
            [(uplink, stream, kind, hour, value, now_ms) for hour, value in hours],
        )
        if keep_ms is not None:
            txn.execute(
                "DELETE FROM delivered_hours "
                "WHERE uplink = ? AND stream = ? AND delivered_at_ms < ?",
                (uplink, stream, now_ms - keep_ms),
            )
        inflight.clear_in(txn, uplink, stream)

    ensure_table(store)
    store.ensure_tables(inflight.TABLE)
    store.advance(uplink, stream, position, state, write=write)


def delivered_hours(
    store: Store, uplink: str, stream: str, kind: str, *, start_ms: int, end_ms: int
) -> list[tuple[int, float]]:
    """(hour_ms, value) recorded for start_ms <= hour_ms <= end_ms, in time order."""
    ensure_table(store)
    rows = store.query(
        "SELECT hour_ms, value FROM delivered_hours WHERE uplink = ? AND stream = ? "
        "AND kind = ? AND hour_ms BETWEEN ? AND ? ORDER BY hour_ms",
        (uplink, stream, kind, start_ms, end_ms),
    )
    return [(int(hour), float(value)) for hour, value in rows]
