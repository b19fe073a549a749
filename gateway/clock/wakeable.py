"""A clock whose sleeps a command can cut short (MQTT `flush`: "retry now")."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from gateway.clock.clocks import Clock


class WakeableClock:
    """The uplink's clock, whose sleeps end early on `wake()`: the MQTT `flush` command
    ("retry now") cuts a retry backoff, an auth probe wait or an idle wait short."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._woken = asyncio.Event()

    def wake(self) -> None:
        """End every sleep in progress now (later sleeps are not affected)."""
        self._woken.set()
        self._woken = asyncio.Event()

    def time(self) -> float:
        return self.clock.time()

    def monotonic(self) -> float:
        return self.clock.monotonic()

    def trusted(self) -> bool:
        return self.clock.trusted()

    async def sleep(self, seconds: float) -> None:
        await self.race(self.clock.sleep(seconds))

    async def race(self, waiting: Awaitable[object]) -> None:
        """Await `waiting`, or return as soon as wake() is called (cancelling it)."""
        woken = asyncio.ensure_future(self._woken.wait())
        task = asyncio.ensure_future(waiting)
        try:
            await asyncio.wait({woken, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (woken, task):
                if not pending.done():
                    pending.cancel()
            await asyncio.gather(woken, task, return_exceptions=True)
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
