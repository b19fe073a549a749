"""`meter-gateway deadletters`: list what uplinks parked as undeliverable, and re-queue it.

Re-queueing marks parked items; the running daemon's Wattics uplink sends them (oldest first,
before new samples) and removes each one Wattics accepts; one refused again is parked again.
Wattics "will discard all packets not sent chronologically", and would still answer 200: a
re-queued packet not later than the last packet Wattics accepted for its datapoint would be
removed as delivered and lost. Such a re-queue is refused here with the reason (and the
uplink refuses it too, should one be marked another way). What it compares with is the last
accepted packet time the uplink commits with its cursor (`accepted:<stream>`); without it (a
store written by an older version) a letter is refused when a later sample of its meter that
was not parked too lies behind the stream's cursor (it was most likely delivered).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.config.schema import Config
from gateway.store.database import Store
from gateway.store.dead_letters import DeadLetter
from gateway.timefmt import local_iso8601_ms
from gateway.uplinks.wattics.stream import accepted_key, packet_time_ms

#: Uplinks whose running instance sends re-queued items (EnerKey: gateway.uplinks.enerkey.
#: requeue; re-queue a message held as "outcome unknown" only when EnerKey lacks its hours).
REQUEUE_SUPPORTED = frozenset({"wattics", "enerkey"})


def _describe(letter: DeadLetter) -> str:
    state = " (re-queued)" if letter.requeued_at_ms is not None else ""
    return (
        f"#{letter.id} {letter.uplink}/{letter.stream} sample {letter.sample_id} "
        f"status {letter.status} after {letter.attempts} attempt(s){state}: {letter.body[:200]}"
    )


def list_letters(store: Store, uplink: str | None) -> int:
    letters = store.dead_letters(uplink, include_requeued=True)
    if not letters:
        print("no parked items")
        return 0
    for letter in letters:
        print(_describe(letter))
        print(f"    payload: {letter.payload}")
    return 0


def requeue(
    config: Config,
    store: Store,
    *,
    uplink: str | None,
    stream: str | None,
    ids: Sequence[int] | None,
) -> int:
    name = uplink or "wattics"
    if name not in REQUEUE_SUPPORTED:
        print(f"re-queueing is supported for: {', '.join(sorted(REQUEUE_SUPPORTED))}")
        return 2
    wanted = [
        letter
        for letter in store.dead_letters(name)
        if (stream is None or letter.stream == stream) and (not ids or letter.id in ids)
    ]
    order_matters = name == "wattics"  # Wattics discards packets not sent chronologically
    refused = {
        letter.id: why
        for letter in wanted
        if order_matters and (why := _out_of_order(store, letter))
    }
    for letter in wanted:
        if letter.id in refused:
            print(f"NOT re-queued {_describe(letter)}")
            print(f"    {refused[letter.id]}")
    allowed = [letter.id for letter in wanted if letter.id not in refused]
    letters = store.requeue(name, ids=allowed, now_ms=int(time.time() * 1000)) if allowed else []
    if not letters:
        print("nothing to re-queue")
        return 1
    for letter in letters:
        print(f"re-queued {_describe(letter)}")
    if getattr(config.uplinks, name, None) is None:
        print(f"note: uplink {name!r} is not in this config: nothing will send these")
    else:
        print(f"{len(letters)} item(s) will be sent by the running daemon (or at its next start)")
    return 1 if refused else 0


def _out_of_order(store: Store, letter: DeadLetter) -> str | None:
    """Why Wattics would discard this letter (None: it keeps order)."""
    stamp = packet_time_ms(letter.payload)
    accepted = store.state(letter.uplink, accepted_key(letter.stream))
    if accepted is not None and stamp is not None:
        if stamp > int(accepted):
            return None
        return (
            f"Wattics already accepted a packet of {letter.stream} stamped "
            f"{local_iso8601_ms(int(accepted), 'UTC')} (UTC), not older than this one; it "
            "discards packets not sent chronologically, so this one would be lost, not "
            "delivered. Keep it parked (its payload is listed above) and enter it by hand "
            "in Wattics if it matters"
        )
    if _processed_since(store, letter):
        return (
            f"newer samples of {letter.stream} were processed since and the last packet "
            "Wattics accepted is not recorded; Wattics discards packets not sent "
            "chronologically, so this one would most likely be lost. Keep it parked"
        )
    return None


def _processed_since(store: Store, letter: DeadLetter) -> bool:
    """Did the stream move past a later sample of the letter's meter that is not parked too?"""
    cursor = store.cursor(letter.uplink, letter.stream)
    if cursor <= letter.sample_id:
        return False
    ((later,),) = store.query(
        "SELECT COUNT(*) FROM samples WHERE id > ? AND id <= ? "
        "AND meter = (SELECT meter FROM samples WHERE id = ?) "
        "AND id NOT IN (SELECT sample_id FROM dead_letters WHERE uplink = ? AND stream = ?)",
        (letter.sample_id, cursor, letter.sample_id, letter.uplink, letter.stream),
    )
    known = store.query("SELECT 1 FROM samples WHERE id = ?", (letter.sample_id,))
    return bool(later) or not known
