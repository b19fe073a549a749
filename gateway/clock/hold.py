"""Readings taken while the wall clock is not trusted, held against the monotonic clock.

Why hold rather than stamp: a sample stamped in 1970, or at fake-hwclock's stale boot time,
is wrong forever, and once stored it blocks that meter's real samples (the store refuses
anything older than a meter's newest). The monotonic clock is right from boot, so a reading
remembers when it was taken on it; once the wall clock is trusted its time is exactly
`trusted_now - (monotonic_now - monotonic_at_read)`.

Bounds (memory and the power-cut risk: held readings live only in memory):
- at most `max_secs` (gateway.clock_hold_max_secs) since the oldest held reading, and at most
  `max_samples` readings (gateway.clock_hold_max_samples) — whichever comes first. Then the
  poller gives up waiting: everything held is stored flagged `clock_unsynced`, stamped with
  the best time it has (see `unsynced_stamp_ms`), and so is every further reading until the
  clock is trusted. Nothing is dropped.
- on a clean stop (SIGTERM) whatever is held is stored flagged `clock_unsynced` the same way
  and the count is logged (`Poller.store_held_at_stop`): only a power cut or kill -9 loses it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

#: The quality flag of a sample whose time is the untrusted clock's (see core.sample).


@dataclass(frozen=True, slots=True)
class HeldReading:
    meter: str
    #: Monotonic seconds when the read started.
    mono: float
    values: Mapping[str, float]
    interval: float


class ClockHold:
    """FIFO of held readings (all meters, in read order), with its two bounds."""

    def __init__(self, max_secs: float, max_samples: int) -> None:
        if max_secs <= 0 or max_samples < 1:
            raise ValueError("hold bounds must be positive")
        self.max_secs = max_secs
        self.max_samples = max_samples
        self._held: deque[HeldReading] = deque()
        #: Set once a bound was reached; cleared when the clock is trusted again.
        self.gave_up = False

    def __len__(self) -> int:
        return len(self._held)

    def add(self, reading: HeldReading) -> None:
        self._held.append(reading)

    def oldest_age(self, mono_now: float) -> float | None:
        return None if not self._held else mono_now - self._held[0].mono

    def exceeded(self, mono_now: float) -> str | None:
        """Why holding must stop now, or None."""
        if len(self._held) > self.max_samples:
            return f"more than {self.max_samples} readings held"
        age = self.oldest_age(mono_now)
        if age is not None and age > self.max_secs:
            return f"the oldest held reading is {age:.0f} s old (limit {self.max_secs:g} s)"
        return None

    def take_all(self) -> list[HeldReading]:
        held = list(self._held)
        self._held.clear()
        return held


def aligned(ts: float, interval: float, tolerance: float) -> float:
    """`ts` moved to its interval boundary when it lies at most `tolerance` after it, as the
    poller stamps an on-time read; else unchanged."""
    boundary = math.floor(ts / interval) * interval
    return boundary if ts - boundary <= tolerance else ts


def trusted_stamp_ms(
    reading: HeldReading, wall_now: float, mono_now: float, tolerance: float
) -> int:
    """The held reading's time on the (now trusted) wall clock, UTC ms."""
    at = wall_now - (mono_now - reading.mono)
    return round(aligned(at, reading.interval, tolerance) * 1000)


def unsynced_stamp_ms(
    reading: HeldReading, wall_now: float, mono_now: float, newest_ms: int | None
) -> int:
    """The best time an untrusted clock gives, never at or before the meter's newest sample
    (then one interval after it: the untrusted clock is behind what is already stored)."""
    at = round((wall_now - (mono_now - reading.mono)) * 1000)
    if newest_ms is not None and at <= newest_ms:
        return newest_ms + max(1, round(reading.interval * 1000))
    return at
