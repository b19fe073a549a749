"""A PTS system's stored samples: which one is the month's reading, and how long they are kept.

gateway.uplinks.pts.window says which sample is nearest to the month end; this module asks the
store for the candidates and holds the samples a window still needs.

Invariants:
- `clock_unsynced` samples are never chosen (a reading at an unknown time cannot be the
  month-end reading); at most MAX_UNTIMED_SKIPPED of them are passed over per query.
- Retention: the store deletes delivered samples after gateway.retention_hours, yet a window
  needs its samples for days. Each system registers a stream (`system-<fk_system>`) whose
  cursor stays just before the open of the earliest window that still needs samples (the open
  window until it has a Passed reading); the store keeps every sample after a registered
  cursor. Once the window passes or closes the cursor moves to the next window's open, so
  between windows nothing is held. The ledger keeps what was sent, so follow-up and status
  never need the samples.
"""

from __future__ import annotations

from typing import Final

from core.flags import CLOCK_UNSYNCED
from core.sample import StoredSample
from gateway.store.async_store import AsyncStore
from gateway.uplinks.pts.state import PtsContext, SystemState, has_passed
from gateway.uplinks.pts.window import (
    DEFAULT_DECIMALS,
    Reading,
    Window,
    choose_reading,
    reading_of,
)

#: At most this many `clock_unsynced` samples are passed over when choosing a reading.
MAX_UNTIMED_SKIPPED: Final = 10_000


async def choose(
    astore: AsyncStore,
    system: SystemState,
    window: Window,
    now: int,
    *,
    after_end_only: bool = False,
    decimals: int = DEFAULT_DECIMALS,
) -> tuple[Reading, frozenset[str]] | None:
    """The reading to report for `window` as of `now` and its sample's quality flags
    (MeterValue to `decimals`); None: no usable sample yet."""
    latest = min(window.close_ms - 1, now)
    channel = system.config.channel
    found: dict[int, frozenset[str]] = {}
    before = None
    if not after_end_only:
        stored = await find_timed(
            astore,
            system.meter,
            window.open_ms,
            min(window.end_ms + 999, latest),
            channel,
            last=True,
        )
        if stored is not None and (before := reading_of(stored, channel, decimals)) is not None:
            found[stored.rowid] = stored.sample.flags
    after = None
    if latest >= window.end_ms + 1000:
        stored = await find_timed(astore, system.meter, window.end_ms + 1000, latest, channel)
        if stored is not None and (after := reading_of(stored, channel, decimals)) is not None:
            found[stored.rowid] = stored.sample.flags
    reading = choose_reading(window, before, after)
    return None if reading is None else (reading, found[reading.sample_id])


async def find_timed(
    astore: AsyncStore,
    meter: str,
    start_ms: int,
    end_ms: int,
    channel: str,
    *,
    last: bool = False,
) -> StoredSample | None:
    """Like Store.find_sample, passing over samples stamped by an untrusted clock
    (`clock_unsynced`: a reading at an unknown time cannot be the month-end reading)."""
    for _ in range(MAX_UNTIMED_SKIPPED):
        stored = await astore.find_sample(meter, start_ms, end_ms, channel=channel, last=last)
        if stored is None or CLOCK_UNSYNCED not in stored.sample.flags:
            return stored
        if last:
            end_ms = stored.sample.ts_ms - 1
        else:
            start_ms = stored.sample.ts_ms + 1
    return None


async def previous_reading(
    astore: AsyncStore, system: SystemState, reading: Reading, decimals: int = DEFAULT_DECIMALS
) -> Reading | None:
    """The stored reading just before `reading` (the numbers of a counter flag)."""
    channel = system.config.channel
    stored = await find_timed(astore, system.meter, 0, reading.ts_ms - 1, channel, last=True)
    return None if stored is None else reading_of(stored, channel, decimals)


async def release_samples(
    ctx: PtsContext, system: SystemState, window: Window | None, now: int
) -> None:
    """Move the stream's cursor to just before the earliest window still needing samples."""
    needed_from = ctx.next_window(now).open_ms
    if window is not None and not has_passed(await ctx.counted(system, window.period.key)):
        needed_from = window.open_ms
    last = await ctx.astore.find_sample(system.meter, 0, min(needed_from, now + 1) - 1, last=True)
    if last is not None and last.rowid > system.released_to:
        await ctx.astore.advance(ctx.name, system.stream, last.rowid)
        system.released_to = last.rowid
