"""Issue 19: one commit per poll boundary, reads that start late are stamped with their own
time, and an overloaded meter logs once when it starts skipping ticks and once when it is
back (the real store; real time, short intervals)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from core.health import Health
from gateway.poller import Poller
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from tests.gateway.test_poller import ScriptedReader, meter, run_for

pytestmark = pytest.mark.timeout(30)


class SharedLineReader(ScriptedReader):
    """A meter behind a shared line: its first request goes out after `wait` seconds (the
    meters before it), as drivers.modbus.reader reports in `turn_started_mono`."""

    def __init__(self, meter_id: str, wait: float) -> None:
        super().__init__(meter_id)
        self.wait = wait
        self.turn_started_mono: float | None = None

    async def read(self) -> dict[str, float]:
        await asyncio.sleep(self.wait)
        self.turn_started_mono = time.monotonic()
        return await super().read()


def count_appends(astore: AsyncStore) -> list[int]:
    """Sizes of the Store's append transactions (one commit each)."""
    sizes: list[int] = []
    original = astore.store.append

    def wrapped(samples: Any) -> Any:
        sizes.append(len(samples))
        return original(samples)

    astore.store.append = wrapped  # type: ignore[method-assign]
    return sizes


async def test_meters_read_at_one_boundary_are_stored_in_one_commit(tmp_path: Path) -> None:
    """Twelve meters on one 0.5 s boundary whose reads end 10 ms apart (a shared line): each
    boundary is one commit of all twelve, not one commit per meter (or per fsync's worth)."""
    astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
    sizes = count_appends(astore)
    health = Health()
    readers = {f"m{i}": ScriptedReader(f"m{i}", delay=0.01 * i) for i in range(12)}
    poller = Poller([meter(m, 0.5) for m in readers], dict(readers), astore, health)
    try:
        await run_for(poller, 1.8)
        stored = await astore.count()
    finally:
        await astore.aclose()
    assert stored >= 24
    full = [size for size in sizes if size == 12]
    assert len(full) >= 2 and sum(sizes) == stored, sizes
    assert len(sizes) <= stored // 12 + 1, f"commits per boundary: {sizes}"


async def test_a_slow_meter_does_not_hold_up_the_commit_of_the_others(tmp_path: Path) -> None:
    """A meter whose read takes 0.35 s of a 0.5 s interval: the others are committed within
    the batch window (a quarter of a second), long before it ends."""
    astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
    health = Health()
    readers = {"fast": ScriptedReader("fast"), "slow": ScriptedReader("slow", delay=0.45)}
    poller = Poller([meter(m, 0.5) for m in readers], dict(readers), astore, health)
    committed_at: list[float] = []

    async def watch() -> None:
        while True:
            await astore.wait_appended(meter="fast")
            committed_at.append(time.time() % 0.5)

    watcher = asyncio.create_task(watch())
    try:
        await run_for(poller, 1.6)
    finally:
        watcher.cancel()
        await astore.aclose()
    assert committed_at and max(committed_at) < 0.35, committed_at
    assert health.meter("slow").reads >= 2


async def test_a_read_that_starts_late_is_stamped_with_its_own_time(tmp_path: Path) -> None:
    """The line is free only 0.3 s after the boundary (tolerance 0.25 s): the sample carries
    when the read started, not the boundary, and is counted late; one on time keeps the
    boundary."""
    astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
    health = Health()
    readers = {"late": SharedLineReader("late", 0.3), "prompt": SharedLineReader("prompt", 0.0)}
    poller = Poller([meter(m, 1.0) for m in readers], dict(readers), astore, health)
    try:
        await run_for(poller, 2.2)
        late = await astore.read("late", 0)
        prompt = await astore.read("prompt", 0)
    finally:
        await astore.aclose()
    assert late and prompt
    assert all(290 <= s.sample.ts_ms % 1000 <= 400 for s in late), [s.sample.ts_ms for s in late]
    assert all(s.sample.ts_ms % 1000 == 0 for s in prompt)
    assert health.meter("late").late_reads == len(late)
    assert health.meter("prompt").late_reads == 0
    lateness = health.meter("late").last_lateness_s
    assert lateness is not None and lateness >= 0.29


async def test_skipping_ticks_logs_once_and_once_on_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A meter whose reads overrun its 0.1 s interval for a while: one WARNING when it starts
    skipping ticks, one when it is on schedule again; the ticks are counted in between."""
    astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
    health = Health()
    reader = ScriptedReader("busy", delay=0.25)
    poller = Poller([meter("busy", 0.1)], {"busy": reader}, astore, health)
    caplog.set_level(logging.WARNING, logger="gateway.poller")
    task = asyncio.create_task(poller.run())
    try:
        await asyncio.sleep(1.3)
        reader.delay = 0.0
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await astore.aclose()
    lines = [r.getMessage() for r in caplog.records if "busy" in r.getMessage()]
    assert health.meter("busy").skipped_ticks >= 6
    assert len([line for line in lines if "overran" in line]) == 1, lines
    recovered = [line for line in lines if "on schedule again" in line]
    assert len(recovered) == 1, lines
    assert f"after {health.meter('busy').skipped_ticks} skipped" in recovered[0]
