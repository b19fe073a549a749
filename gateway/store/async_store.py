"""The store for asyncio code: one worker thread owns the SQLite connection.

Why a thread: an fsync with synchronous=FULL takes milliseconds on an SD card; the event loop
must keep polling meters meanwhile. Appends arriving while a commit runs are grouped into the
next transaction (group commit), so many meters cost one fsync, not one each.

Followers of the log (uplink streams, the MQTT values feed) wait per meter: an append wakes
only those waiting for that meter's samples (or for any), and `has_after` tells from memory
whether a follower at a position has anything new, so an idle follower queries nothing.

Every Store operation has a coroutine of the same name here; an uplink's own operations on
its own tables (functions taking the Store first) run on the same thread through `run`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar

from core.sample import Sample, StoredSample
from gateway.store.database import Store

P = ParamSpec("P")
T = TypeVar("T")


def _on_store_thread(
    method: Callable[Concatenate[Store, P], T],
) -> Callable[Concatenate[AsyncStore, P], Awaitable[T]]:
    """An AsyncStore coroutine that runs `method` of its Store on the store's thread, with the
    same name, parameters and docstring (typed: mypy checks every call)."""

    name = method.__name__

    async def on_thread(self: AsyncStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        bound: Callable[P, T] = getattr(self.store, name)  # the instance's (tests wrap them)
        return await self.call(bound, *args, **kwargs)

    on_thread.__name__ = on_thread.__qualname__ = name
    on_thread.__doc__ = method.__doc__
    return on_thread


class AsyncStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._pending: list[tuple[Sequence[Sample], asyncio.Future[list[int | None]]]] = []
        self._flushing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._appended = asyncio.Event()
        #: meter -> the event its next append sets (made by a waiter, dropped when set).
        self._appended_of: dict[str, asyncio.Event] = {}
        self._closed = False
        #: Samples stored through this AsyncStore since it was opened, per meter.
        self.stored: Counter[str] = Counter()

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` on the store's thread (the one thread that touches the connection)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def run(
        self, fn: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run an uplink's own store function `fn(store, ...)` on the store's thread."""
        return await self.call(fn, self.store, *args, **kwargs)

    def last_ts(self, meter: str) -> int | None:
        """The newest stored sample time of `meter` (kept in memory: no thread hop)."""
        return self.store.last_ts(meter)

    def has_after(self, meter: str, position: int) -> bool:
        """Whether `meter` has a sample stored after row `position` (memory: no thread hop)."""
        return self.store.last_id(meter) > position

    def newest_id(self, meter: str) -> int:
        """The id of `meter`'s newest stored sample, 0 if none (memory: no thread hop)."""
        return self.store.last_id(meter)

    def requeue_generation(self) -> int:
        """Changes when dead letters may have been re-queued (Store.requeue_generation)."""
        return self.store.requeue_generation

    async def read_new(
        self, meter: str, after_id: int, limit: int = 500
    ) -> tuple[list[StoredSample], int]:
        """`meter`'s samples after `after_id` and the position read up to: no query at all
        when nothing newer is stored. When the rows up to the newest are gone (pruned), the
        position moves to the newest, so a follower does not ask again for nothing."""
        newest = self.store.last_id(meter)
        if newest <= after_id:
            return [], after_id
        rows = await self.read(meter, after_id, limit)
        return rows, rows[-1].rowid if rows else newest

    # -- the Store's operations, by name, on the store's thread -------------------------------

    read = _on_store_thread(Store.read)
    read_all = _on_store_thread(Store.read_all)
    read_time_range = _on_store_thread(Store.read_time_range)
    find_sample = _on_store_thread(Store.find_sample)
    count = _on_store_thread(Store.count)
    register_stream = _on_store_thread(Store.register_stream)
    cursor = _on_store_thread(Store.cursor)
    advance = _on_store_thread(Store.advance)
    advance_many = _on_store_thread(Store.advance_many)
    backlog = _on_store_thread(Store.backlog)
    state = _on_store_thread(Store.state)
    put_state = _on_store_thread(Store.put_state)
    park = _on_store_thread(Store.park)
    dead_letters = _on_store_thread(Store.dead_letters)
    dead_letter_count = _on_store_thread(Store.dead_letter_count)
    requeue = _on_store_thread(Store.requeue)
    requeued_letters = _on_store_thread(Store.requeued_letters)
    repark = _on_store_thread(Store.repark)
    forget_dead_letter = _on_store_thread(Store.forget_dead_letter)
    prune = _on_store_thread(Store.prune)
    used_bytes = _on_store_thread(Store.used_bytes)
    check_files = _on_store_thread(Store.check_files)

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
                self.stored.update(
                    s.meter for s, i in zip(merged, ids, strict=True) if i is not None
                )
                start = 0
                for samples, future in batch:
                    if not future.done():
                        future.set_result(ids[start : start + len(samples)])
                    start += len(samples)
                if any(i is not None for i in ids):
                    self._appended.set()
                    self._appended = asyncio.Event()
                    for meter in {s.meter for s, i in zip(merged, ids, strict=True) if i}:
                        event = self._appended_of.pop(meter, None)
                        if event is not None:
                            event.set()
        finally:
            self._flushing = False
            self._idle.set()

    def wait_appended(
        self, timeout: float | None = None, *, meter: str | None = None
    ) -> Coroutine[Any, Any, bool]:
        """Wait until a sample (of `meter`, when given) is appended (True) or the timeout
        passes (False). Armed when called, not when first awaited: check `has_after`, then
        call this, and no append in between is missed."""
        if meter is None:
            event = self._appended
        else:
            event = self._appended_of.setdefault(meter, asyncio.Event())
        return _wait(event, timeout)

    async def aclose(self) -> None:
        """Let pending appends commit, then close the database; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._idle.wait()
        await self.call(self.store.close)
        self._executor.shutdown(wait=True)


async def _wait(event: asyncio.Event, timeout: float | None) -> bool:
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
