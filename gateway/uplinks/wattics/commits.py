"""Group commits of the Wattics uplink's cursors: every stream in one transaction.

A stream's acknowledged position becomes durable with the next group: at most every
commit_every_secs, or at once when asked (a full group during catch-up, a pause, stopping).
A cursor lagging by a few seconds costs at most a re-send after a crash, which resync skips
and Wattics would discard anyway; one fsync per packet and stream would cost an SD card
gigabytes a day.

Invariants: a group writes each stream's position together with the state that describes it
(`state_of`), in one transaction; a failed write leaves every stream of the group dirty.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from gateway.clock.clocks import Clock
from gateway.store.async_store import AsyncStore
from gateway.uplinks.wattics.stream import WatticsStream


class GroupCommits:
    """The uplink's pending cursor positions and their one-transaction commits."""

    def __init__(
        self,
        uplink: str,
        store: AsyncStore,
        clock: Clock,
        every_secs: float,
        state_of: Callable[[WatticsStream], Mapping[str, str] | None],
    ) -> None:
        self._uplink = uplink
        self._store = store
        self._clock = clock
        self._every_secs = every_secs
        self._state_of = state_of
        self._dirty: dict[str, WatticsStream] = {}
        self._committed_at = clock.monotonic()
        self._lock = asyncio.Lock()

    async def commit(self, st: WatticsStream, *, now: bool = False) -> None:
        """Queue `st`'s position; write the group when due (or `now`)."""
        if st.acked > st.committed:
            self._dirty[st.stream] = st
        due = self._clock.monotonic() - self._committed_at >= self._every_secs
        if self._dirty and (now or due):
            await self._write()

    def due_in(self) -> float | None:
        """Seconds until queued positions are due (None: nothing waits)."""
        if not self._dirty:
            return None
        elapsed = self._clock.monotonic() - self._committed_at
        return max(0.0, self._every_secs - elapsed)

    async def _write(self) -> None:
        async with self._lock:
            dirty, self._dirty = self._dirty, {}
            streams = [st for st in dirty.values() if st.acked > st.committed]
            rows = [(st.stream, st.acked, self._state_of(st)) for st in streams]
            try:
                if rows:
                    await self._store.advance_many(self._uplink, rows)
            except BaseException:
                self._dirty = {**dirty, **self._dirty}
                raise
            for st, (_, position, _) in zip(streams, rows, strict=True):
                st.committed = position
                st.uncommitted = 0
            self._committed_at = self._clock.monotonic()
