"""EnerKey messages whose outcome is not known: recorded "in flight" before they are sent.

EnerKey SUMS every value pushed for one meter and hour ("Multiple values for same hour are
summed."), consumption and cumulative readings alike, so a message must never go twice unless
the gateway knows the first did not arrive. EnerKey publishes no way to read back what it holds
for a pushed meter (the Values "Get hourly values" path and answer are not documented), so an
unknown outcome cannot be resolved by asking: it is held for a human (docs/uplinks/enerkey.md).

Invariants (every change must keep them):
1. A stream's row is committed BEFORE its request goes out, with the body and the cursor and
   state the stream moves to once the message is delivered. One row per stream at most (a
   stream sends one message at a time).
2. The row goes in the SAME transaction that records the delivery (gateway.uplinks.enerkey.
   delivered.record_delivery), and after an answer that says EnerKey did not take the message
   (a status other than OK, 502 or 504; a connection never made): then it is sent again.
3. A row found at start, or a request whose answer was lost after it may have arrived, is an
   unknown outcome: the message is parked in the dead-letter table (status NULL, "outcome
   unknown"), the stream moves past it, an alert names its hours, and it is counted. A row
   whose cursor the stream already passed (a crash between parking and removing it) just goes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from gateway.net.policy import Outcome, Verdict
from gateway.store.database import Store, Transaction

TABLE: Final = """
CREATE TABLE IF NOT EXISTS enerkey_in_flight (
    uplink TEXT NOT NULL,
    stream TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    hours INTEGER NOT NULL,
    first_hour_ms INTEGER NOT NULL,
    last_hour_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    PRIMARY KEY (uplink, stream)
);
"""

#: Answers from a proxy or load balancer that lost EnerKey's own answer (it may have taken
#: the message): as unknown as a lost connection.
UNKNOWN_STATUSES: Final = frozenset({502, 504})

#: The dead-letter body of a held message (what `deadletters` lists).
UNKNOWN: Final = "outcome unknown"


class OutcomeUnknown(Exception):
    """EnerKey may have taken the message though no 2xx came (invariant 3)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.detail)
        self.verdict = verdict


@dataclass(frozen=True, slots=True)
class InFlight:
    """One message sent (or about to be) whose answer is not recorded."""

    cursor: int
    hours: int
    first_hour_ms: int
    last_hour_ms: int
    body: str
    #: The uplink_state rows of the stream once the message is delivered.
    state: dict[str, str]
    sent_at_ms: int


def outcome_unknown(verdict: Verdict) -> bool:
    """True when EnerKey may have taken a message although no 2xx came back."""
    if verdict.outcome is Outcome.OK:
        return False
    return verdict.maybe_arrived or verdict.status in UNKNOWN_STATUSES


def record(store: Store, uplink: str, stream: str, flight: InFlight) -> None:
    """Invariant 1: committed before the request goes out."""
    store.ensure_tables(TABLE)
    with store.transaction() as txn:
        txn.execute(
            "INSERT OR REPLACE INTO enerkey_in_flight (uplink, stream, cursor, hours, "
            "first_hour_ms, last_hour_ms, body, state, sent_at_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                uplink,
                stream,
                flight.cursor,
                flight.hours,
                flight.first_hour_ms,
                flight.last_hour_ms,
                flight.body,
                json.dumps(flight.state),
                flight.sent_at_ms,
            ),
        )


def clear_in(txn: Transaction, uplink: str, stream: str) -> None:
    """Remove the stream's row inside a caller's transaction (the delivery's)."""
    txn.execute("DELETE FROM enerkey_in_flight WHERE uplink = ? AND stream = ?", (uplink, stream))


def clear(store: Store, uplink: str, stream: str) -> None:
    """EnerKey answered that it did not take the message (invariant 2)."""
    store.ensure_tables(TABLE)
    with store.transaction() as txn:
        clear_in(txn, uplink, stream)


def pending(store: Store, uplink: str, stream: str) -> InFlight | None:
    """The row a previous run left (invariant 3), if any."""
    store.ensure_tables(TABLE)
    rows = store.query(
        "SELECT cursor, hours, first_hour_ms, last_hour_ms, body, state, sent_at_ms "
        "FROM enerkey_in_flight WHERE uplink = ? AND stream = ?",
        (uplink, stream),
    )
    if not rows:
        return None
    cursor, hours, first, last, body, state, sent_at = rows[0]
    return InFlight(int(cursor), int(hours), int(first), int(last), str(body),
                    dict(json.loads(state)), int(sent_at))  # fmt: skip


def hold(
    store: Store, uplink: str, stream: str, flight: InFlight, *, why: str, now_ms: int
) -> None:
    """Park a message of unknown outcome and move the stream past it (invariant 3)."""
    if store.cursor(uplink, stream) < flight.cursor:
        store.park(
            uplink,
            stream,
            flight.cursor,
            payload=flight.body,
            status=None,
            body=f"{UNKNOWN}: {why}",
            attempts=1,
            now_ms=now_ms,
            state=flight.state,
        )
    clear(store, uplink, stream)
