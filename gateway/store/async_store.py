"""The store for asyncio code: one worker thread owns the SQLite connection.

Why a thread: an fsync with synchronous=FULL takes milliseconds on an SD card; the event loop
must keep polling meters meanwhile. Appends arriving while a commit runs are grouped into the
next transaction (group commit), so many meters cost one fsync, not one each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from core.sample import Sample
from gateway.store.database import Store

P = ParamSpec("P")
T = TypeVar("T")


class AsyncStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._pending: list[tuple[Sequence[Sample], asyncio.Future[list[int | None]]]] = []
        self._flushing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._appended = asyncio.Event()
        self._closed = False

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one Store method on the store's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def append(self, samples: Sequence[Sample]) -> list[int | None]:
        """Store samples durably; returns after COMMIT (ids, None where refused as older)."""
        future: asyncio.Future[list[int | None]] = asyncio.get_running_loop().create_future()
        self._pending.append((samples, future))
        if not self._flushing:
            self._flushing = True
            self._idle.clear()
            asyncio.get_running_loop().create_task(self._flush(), name="store-flush")
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                merged = [sample for samples, _ in batch for sample in samples]
                try:
                    ids = await self.call(self.store.append, merged)
                except Exception as exc:  # StoreFull or sqlite errors: every waiter hears it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for samples, future in batch:
                    if not future.done():
                        future.set_result(ids[start : start + len(samples)])
                    start += len(samples)
                if any(i is not None for i in ids):
                    self._appended.set()
                    self._appended = asyncio.Event()
        finally:
            self._flushing = False
            self._idle.set()

    async def wait_appended(self, timeout: float | None = None) -> bool:
        """Wait until some sample is appended (True) or the timeout passes (False)."""
        event = self._appended
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Let pending appends commit, then close the database; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._idle.wait()
        await self.call(self.store.close)
        self._executor.shutdown(wait=True)
