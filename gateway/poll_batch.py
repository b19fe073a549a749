"""One commit per poll boundary: the samples of every meter read at a boundary, stored together.

Why: each commit costs an fsync and rewrites whole pages (WAL frames) on an SD card; 50 meters
read at :00 stored one by one would cost up to 50 commits a second. Grouping what arrives
while a commit runs (gateway.store.async_store) is not enough when reads finish a few
milliseconds apart, as they do on a shared line.

Invariants:
1. A meter's task joins its boundary's batch before reading and leaves it exactly once (with a
   sample, or without one after a failure or cancellation), so a batch never waits for a read
   that is over.
2. A batch is committed once every read that joined it has ended, or `window_s` after its first
   sample arrived (a slow or dead meter holds up nobody for longer); a sample that arrives
   after its batch was committed is committed on its own. Nothing is dropped.
3. `store` returns only after the commit that holds the caller's sample (commit before
   anything else sees it); each meter's samples are offered in its own order (a meter's task
   waits for its sample's commit before reading again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from core.sample import Sample

#: The longest a finished read waits for slower reads of its boundary: this share of the
#: shortest interval in the batch, and never more than MAX_WINDOW_S.
WINDOW_SHARE = 0.5
MAX_WINDOW_S = 1.0


@dataclass(eq=False)
class Batch:
    key: float
    window_s: float
    outstanding: int = 0
    samples: list[Sample] = field(default_factory=list)
    committed: asyncio.Future[None] | None = None
    timer: asyncio.TimerHandle | None = None
    flushing: bool = False


class BoundaryBatches:
    """The open batches of a poller, one per boundary (wall-clock seconds)."""

    def __init__(self, commit: Callable[[list[Sample]], Awaitable[None]]) -> None:
        self._commit = commit
        self._open: dict[float, Batch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def join(self, boundary: float | None, interval: float) -> Batch | None:
        """A read for `boundary` begins (None: not on a boundary, nothing to join)."""
        if boundary is None:
            return None
        window = min(MAX_WINDOW_S, WINDOW_SHARE * interval)
        batch = self._open.get(boundary)
        if batch is None:
            batch = self._open[boundary] = Batch(boundary, window)
        batch.window_s = min(batch.window_s, window)
        batch.outstanding += 1
        return batch

    def leave(self, batch: Batch | None) -> None:
        """A read that joined ends without a sample (it failed or was cancelled)."""
        if batch is None:
            return
        batch.outstanding -= 1
        if batch.outstanding <= 0 and not batch.flushing:
            self._schedule_now(batch)

    async def store(self, batch: Batch, sample: Sample | None) -> None:
        """The read that joined `batch` ended with `sample`; returns once it is committed."""
        if sample is None:  # nothing of ours to wait for
            self.leave(batch)
            return
        batch.outstanding -= 1
        if batch.flushing:  # committed without it (its window passed): on its own
            await self._commit([sample])
            return
        loop = asyncio.get_running_loop()
        if batch.committed is None:
            batch.committed = loop.create_future()
        committed = batch.committed
        batch.samples.append(sample)
        if batch.timer is None:
            batch.timer = loop.call_later(batch.window_s, self._schedule_now, batch)
        if batch.outstanding <= 0:
            await self._flush(batch)
        else:
            # Not `await committed`: a cancelled waiter must not cancel everyone's commit.
            await asyncio.wait([committed])
        if committed.cancelled():
            raise asyncio.CancelledError
        error = committed.exception()
        if error is not None:
            raise error

    def _schedule_now(self, batch: Batch) -> None:
        """Commit `batch` now (its window passed, or every read has ended)."""
        if batch.flushing:
            return
        task = asyncio.get_running_loop().create_task(self._flush(batch), name="store-boundary")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: Batch) -> None:
        """Commit the batch; the outcome goes to its `committed` future (never raised here)."""
        if batch.flushing:
            return
        batch.flushing = True
        self._close(batch)
        samples, batch.samples = batch.samples, []
        committed = batch.committed
        outcome: BaseException | None = None
        try:
            if samples:
                await self._commit(samples)
        except asyncio.CancelledError as exc:
            outcome = exc
            raise
        except Exception as exc:
            outcome = exc
        finally:
            if committed is not None and not committed.done():
                if isinstance(outcome, asyncio.CancelledError):
                    committed.cancel()
                elif outcome is not None:
                    committed.set_exception(outcome)
                else:
                    committed.set_result(None)

    def _close(self, batch: Batch) -> None:
        if batch.timer is not None:
            batch.timer.cancel()
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]
