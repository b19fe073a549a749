"""`meter-gateway deadletters`: list what uplinks parked as undeliverable, and re-queue it.

Re-queueing marks parked items; the running daemon's Wattics uplink sends them (oldest first,
before new samples) and removes each one Wattics accepts; one refused again is parked again.
Wattics silently discards a packet older than the last one it processed for that datapoint,
so re-queueing is useful when everything after the first parked packet was parked too
(typically: a datapoint that was not registered yet). We warn when newer samples of that
datapoint have been processed since, because then Wattics will most likely drop it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.config.schema import Config
from gateway.store.database import DeadLetter, Store

#: Uplinks whose running instance sends re-queued items.
REQUEUE_SUPPORTED = frozenset({"wattics"})


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
    letters = store.requeue(name, ids=ids or None, stream=stream, now_ms=int(time.time() * 1000))
    if not letters:
        print("nothing to re-queue")
        return 1
    for letter in letters:
        print(f"re-queued {_describe(letter)}")
        if store.cursor(letter.uplink, letter.stream) > letter.sample_id:
            print(
                "    warning: newer samples of this datapoint were processed since; Wattics "
                "discards a packet older than its last one, so this one may be dropped"
            )
    if getattr(config.uplinks, name, None) is None:
        print(f"note: uplink {name!r} is not in this config: nothing will send these")
    else:
        print(f"{len(letters)} item(s) will be sent by the running daemon (or at its next start)")
    return 0
