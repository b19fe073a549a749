"""Wall-clock time behind one small interface, so schedules can be tested without waiting.

A Raspberry Pi has no real-time clock: it boots in the past until NTP answers. A timestamp
taken then would be wrong and, once stored, would block that meter's real samples (the
store refuses anything older than a meter's newest). So the poller asks `trusted()` before
stamping anything; the default check refuses any time before this release was built.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Protocol

#: No real sample can be older than the software that took it (2026-01-01T00:00:00Z).
EARLIEST_PLAUSIBLE_S = 1_767_225_600.0


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def trusted(self) -> bool:
        """True when wall-clock time may be used to stamp samples."""
        ...


class SystemClock:
    """The machine's clocks (injectable `wall` and `mono` for tests of what derives from it)."""

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._mono = mono

    def time(self) -> float:
        return self._wall()

    def monotonic(self) -> float:
        return self._mono()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def trusted(self) -> bool:
        return self.time() >= EARLIEST_PLAUSIBLE_S


def next_boundary(now: float, interval: float) -> float:
    """The first multiple of `interval` strictly after `now`: a 60 s meter reads at :00."""
    return (math.floor(now / interval) + 1) * interval
