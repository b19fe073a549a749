"""`ManualClock`: the one test double of gateway.clock.clocks.Clock.

Two ways for time to pass, picked by `speed`:

* `speed=0` (the default), virtual time: the clock stands still until the test moves it
  (`clock.now = ...`, `clock.now += ...`, `advance()`) or the code under test sleeps, which
  advances it at once (and yields to the loop). Nothing really waits.
* `speed=N`: time runs N times faster than real time (1 = real time) and `sleep(s)` really
  waits s / N seconds, so real sockets and servers can take part.

Either way the test can also *step the wall clock* alone (`set_wall()`, `step_wall()`), as
`date -s` or NTP would: `time()` jumps, `monotonic()` does not. `is_trusted` is what
`trusted()` answers. With `stop_at` (virtual time only), a sleep that reaches that wall time
sets `reached` and then blocks until cancelled: the test runs the code up to a moment and
stops it there.
"""

from __future__ import annotations

import asyncio
import time


class ManualClock:
    def __init__(
        self,
        start: float | None = None,
        *,
        monotonic: float | None = None,
        speed: float = 0.0,
        trusted: bool = True,
        stop_at: float | None = None,
    ) -> None:
        """`start`: wall time (epoch s) now, the real time when None; `monotonic`: what
        monotonic() reads now (default: `start`)."""
        if speed < 0:
            raise ValueError("speed must be >= 0")
        if stop_at is not None and speed:
            raise ValueError("stop_at needs virtual time (speed=0)")
        wall = time.time() if start is None else start
        self.speed = speed
        self.is_trusted = trusted
        self.stop_at = stop_at
        self.reached = asyncio.Event()
        #: sleep() calls so far (a busy loop shows as many).
        self.sleeps = 0
        # monotonic() = _monotonic + real seconds since _real_origin * speed; time() adds
        # _wall_offset (0.0 until the wall clock is stepped, so time() == monotonic() exactly)
        self._real_origin = time.monotonic()
        self._monotonic = wall if monotonic is None else monotonic
        self._wall_offset = wall - self._monotonic

    # -- the Clock protocol -------------------------------------------------------------------

    def time(self) -> float:
        return self.monotonic() + self._wall_offset

    def monotonic(self) -> float:
        if not self.speed:
            return self._monotonic
        return self._monotonic + (time.monotonic() - self._real_origin) * self.speed

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        seconds = max(0.0, seconds)
        if self.speed:
            await asyncio.sleep(seconds / self.speed)
            return
        self.advance(seconds)
        if self.stop_at is not None and self.time() >= self.stop_at:
            self.reached.set()
            await asyncio.Event().wait()
        await asyncio.sleep(0)

    def trusted(self) -> bool:
        return self.is_trusted

    # -- moving it ----------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Time passes: wall and monotonic time move on together."""
        self._monotonic += seconds

    @property
    def now(self) -> float:
        """Wall time; setting it moves wall and monotonic time together (time passes)."""
        return self.time()

    @now.setter
    def now(self, value: float) -> None:
        if self.speed:
            self.advance(value - self.time())
        else:  # the same, without rounding: time() reads exactly `value` afterwards
            self._monotonic = value - self._wall_offset

    def set_wall(self, value: float) -> None:
        """The wall clock is set (`date -s`, an NTP step): monotonic time does not move."""
        self._wall_offset += value - self.time()

    def step_wall(self, seconds: float) -> None:
        """The wall clock is stepped by `seconds` (negative: back); monotonic time is not."""
        self._wall_offset += seconds
