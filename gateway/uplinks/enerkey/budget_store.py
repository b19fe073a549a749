"""The EnerKey rate budget kept in the store, so that a restart does not reset it.

Invariant: one `enerkey_budget` row per uplink holds the budget's snapshot (bucket, block,
servers' counts) and `enerkey_calls` one row per call started in the last window; both are
written in ONE transaction after every call (only calls newer than the newest row are
added, rows older than the window go). What is restored is never more generous than what was
saved (gateway.uplinks.enerkey.rate_budget, invariant 3).
"""

from __future__ import annotations

import json
from typing import Final

from gateway.store.database import Store
from gateway.uplinks.enerkey.rate_budget import BudgetSnapshot

TABLES: Final = """
CREATE TABLE IF NOT EXISTS enerkey_budget (
    uplink TEXT PRIMARY KEY,
    at REAL NOT NULL,
    tokens REAL NOT NULL,
    blocked_until REAL NOT NULL,
    remaining TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS enerkey_calls (
    uplink TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS enerkey_calls_by_time ON enerkey_calls (uplink, at);
"""


def save(store: Store, uplink: str, snapshot: BudgetSnapshot, *, window_secs: float) -> None:
    """After a call: the snapshot, the newest call, and the window's calls only."""
    store.ensure_tables(TABLES)
    with store.transaction() as txn:
        txn.execute(
            "INSERT OR REPLACE INTO enerkey_budget (uplink, at, tokens, blocked_until, remaining) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                uplink,
                snapshot.at,
                snapshot.tokens,
                snapshot.blocked_until,
                json.dumps(snapshot.remaining),
            ),
        )
        ((newest,),) = txn.execute(
            "SELECT MAX(at) FROM enerkey_calls WHERE uplink = ?", (uplink,)
        ).fetchall()
        txn.executemany(
            "INSERT INTO enerkey_calls (uplink, at) VALUES (?, ?)",
            [(uplink, at) for at in snapshot.calls if newest is None or at > newest],
        )
        txn.execute(
            "DELETE FROM enerkey_calls WHERE uplink = ? AND at <= ?",
            (uplink, snapshot.at - window_secs),
        )


def load(store: Store, uplink: str) -> BudgetSnapshot | None:
    store.ensure_tables(TABLES)
    rows = store.query(
        "SELECT at, tokens, blocked_until, remaining FROM enerkey_budget WHERE uplink = ?",
        (uplink,),
    )
    if not rows:
        return None
    at, tokens, blocked_until, remaining = rows[0]
    calls = store.query("SELECT at FROM enerkey_calls WHERE uplink = ? ORDER BY at", (uplink,))
    try:
        counts = {str(k): int(v) for k, v in dict(json.loads(remaining)).items()}
    except (ValueError, TypeError):
        counts = {}
    return BudgetSnapshot(
        float(at), float(tokens), float(blocked_until), tuple(float(c) for (c,) in calls), counts
    )
