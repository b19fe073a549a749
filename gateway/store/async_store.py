"""The store for asyncio code: one worker thread owns the SQLite connection.

Why a thread: an fsync with synchronous=FULL takes milliseconds on an SD card; the event loop
must keep polling meters meanwhile. Appends arriving while a commit runs are grouped into the
next transaction (group commit), so many meters cost one fsync, not one each.

Every Store operation has a coroutine of the same name here; an uplink's own operations on
its own tables (functions taking the Store first) run on the same thread through `run`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, ParamSpec, TypeVar

from core.sample import Sample, StoredSample
from gateway.store.database import Backlog, DeadLetter, Store

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
        """Run `fn` on the store's thread (the one thread that touches the connection)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def run(
        self, fn: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run an uplink's own store function `fn(store, ...)` on the store's thread."""
        return await self.call(fn, self.store, *args, **kwargs)

    # -- the Store's operations, by name -----------------------------------------------------

    def last_ts(self, meter: str) -> int | None:
        """The newest stored sample time of `meter` (kept in memory: no thread hop)."""
        return self.store.last_ts(meter)

    async def read(self, meter: str, after_id: int, limit: int = 500) -> list[StoredSample]:
        return await self.call(self.store.read, meter, after_id, limit)

    async def read_all(self, after_id: int = 0, limit: int = 1000) -> list[StoredSample]:
        return await self.call(self.store.read_all, after_id, limit)

    async def read_time_range(self, meter: str, start_ms: int, end_ms: int) -> list[StoredSample]:
        return await self.call(self.store.read_time_range, meter, start_ms, end_ms)

    async def find_sample(
        self,
        meter: str,
        start_ms: int,
        end_ms: int,
        *,
        channel: str | None = None,
        last: bool = False,
    ) -> StoredSample | None:
        return await self.call(
            self.store.find_sample, meter, start_ms, end_ms, channel=channel, last=last
        )

    async def register_stream(self, uplink: str, stream: str, meter: str) -> int:
        return await self.call(self.store.register_stream, uplink, stream, meter)

    async def cursor(self, uplink: str, stream: str) -> int:
        return await self.call(self.store.cursor, uplink, stream)

    async def advance(
        self, uplink: str, stream: str, position: int, state: Mapping[str, str] | None = None
    ) -> None:
        await self.call(self.store.advance, uplink, stream, position, state)

    async def advance_many(
        self, uplink: str, rows: Sequence[tuple[str, int, Mapping[str, str] | None]]
    ) -> None:
        await self.call(self.store.advance_many, uplink, rows)

    async def backlog(self, uplink: str, stream: str) -> Backlog:
        return await self.call(self.store.backlog, uplink, stream)

    async def state(self, uplink: str, key: str) -> str | None:
        return await self.call(self.store.state, uplink, key)

    async def put_state(self, uplink: str, values: Mapping[str, str]) -> None:
        await self.call(self.store.put_state, uplink, values)

    async def park(
        self,
        uplink: str,
        stream: str,
        sample_id: int,
        *,
        payload: str,
        status: int | None,
        body: str,
        attempts: int,
        now_ms: int,
        state: Mapping[str, str] | None = None,
    ) -> int:
        return await self.call(
            self.store.park,
            uplink,
            stream,
            sample_id,
            payload=payload,
            status=status,
            body=body,
            attempts=attempts,
            now_ms=now_ms,
            state=state,
        )

    async def dead_letters(
        self, uplink: str | None = None, *, include_requeued: bool = False
    ) -> list[DeadLetter]:
        return await self.call(self.store.dead_letters, uplink, include_requeued=include_requeued)

    async def dead_letter_count(self, uplink: str) -> int:
        return await self.call(self.store.dead_letter_count, uplink)

    async def requeued_letters(self, uplink: str, stream: str) -> list[DeadLetter]:
        return await self.call(self.store.requeued_letters, uplink, stream)

    async def repark(
        self, letter_id: int, *, status: int | None, body: str, attempts: int, now_ms: int
    ) -> None:
        await self.call(
            self.store.repark, letter_id, status=status, body=body, attempts=attempts, now_ms=now_ms
        )

    async def forget_dead_letter(self, letter_id: int) -> None:
        await self.call(self.store.forget_dead_letter, letter_id)

    async def prune(self, now_ms: int, retention_ms: int) -> int:
        return await self.call(self.store.prune, now_ms, retention_ms)

    async def used_bytes(self) -> int:
        return await self.call(self.store.used_bytes)

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
