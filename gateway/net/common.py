"""Pieces every HTTP uplink needs the same way: a bounded answer reader, the gate that stops
all streams while credentials are refused, and per-stream tasks with a graceful shutdown.
(The injectable clock is gateway.clock.clocks.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Final

import aiohttp

from core.backoff import Backoff
from core.health import UplinkHealth
from gateway.clock.clocks import Clock

log = logging.getLogger(__name__)

#: Bytes of an answer body kept (for the dead-letter table and last_error).
MAX_ANSWER_BYTES: Final = 16_384


async def read_limited(response: aiohttp.ClientResponse, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """At most `limit` bytes of an answer: a garbage answer must not eat the Pi's memory.

    A body read to its end keeps the connection reusable; a longer one is cut (and aiohttp
    closes that connection).
    """
    content = response.content
    data = await content.read(limit)
    if len(data) >= limit or content.at_eof():
        return data[:limit]
    chunks = [data]
    size = len(data)
    while size < limit:
        chunk = await content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


SessionFactory = Callable[[], aiohttp.ClientSession]


class KeptSession:
    """One kept-alive aiohttp session per client, opened on first use and again after a
    close (tests inject `factory`); closing twice is harmless."""

    def __init__(
        self,
        timeout_secs: float,
        *,
        max_connections: int = 100,
        factory: SessionFactory | None = None,
    ) -> None:
        self._timeout_secs = timeout_secs
        self._max_connections = max_connections
        self._factory = factory
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self._factory is not None:
                self._session = self._factory()
            else:
                self._session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self._timeout_secs),
                    connector=aiohttp.TCPConnector(limit=self._max_connections),
                )
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


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

    async def race(self, waiting: Coroutine[Any, Any, object]) -> None:
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


async def restart_on_error(
    run: Callable[[], Awaitable[None]],
    *,
    what: str,
    stopping: Callable[[], bool],
    backoff: Backoff,
    clock: Clock,
    health: UplinkHealth,
) -> None:
    """Run one uplink stream until stopping; a bug or a store error restarts it (from its
    cursor, which `run` reads itself) after a backoff, instead of ending the daemon."""
    while not stopping():
        try:
            await run()
        except Exception as exc:
            log.exception("%s: stream stopped by an error; restarting", what)
            health.last_error = f"internal: {type(exc).__name__}"
            await clock.sleep(backoff.next_delay())


class AuthGate:
    """Every stream stops while credentials are refused; the stream that saw it first probes."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.prober: str | None = None

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    def close(self, stream: str) -> bool:
        """Pause; True if this call started the pause."""
        if self.paused:
            return False
        self._open.clear()
        self.prober = stream
        return True

    def reopen(self) -> bool:
        """Resume; True if the uplink was paused."""
        if not self.paused:
            return False
        self.prober = None
        self._open.set()
        return True

    async def wait_turn(self, stream: str, probe_secs: float, clock: Clock) -> None:
        """Return when `stream` may send: the gate is open, or it is the prober's turn."""
        while self.paused:
            if self.prober == stream:
                await clock.sleep(probe_secs)
                return
            await self._open.wait()


async def run_streams_until_cancelled(
    name: str,
    workers: Mapping[str, Callable[[], Coroutine[Any, Any, None]]],
    *,
    busy: Callable[[str], bool],
    grace_secs: float,
    on_stop: Callable[[], None],
) -> None:
    """One named task per stream, until this coroutine is cancelled.

    Shutdown: `on_stop()` first (streams stop taking new work); streams waiting (idle, backoff,
    pause) are cancelled at once; a stream that is `busy` (a request in flight) may finish for
    `grace_secs`, so that an answer the service gave is acknowledged and not sent again next
    start. Then everything left is cancelled and the cancellation propagates.
    """
    async with asyncio.TaskGroup() as group:
        tasks = {
            group.create_task(factory(), name=f"{name}:{stream}"): stream
            for stream, factory in workers.items()
        }
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            on_stop()
            for task, stream in tasks.items():
                if not busy(stream):
                    task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=grace_secs)
            for task in pending:
                task.cancel()
            await asyncio.wait(tasks)
            raise
