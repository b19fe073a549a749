"""Wall-clock alignment, independence of meters, error accounting."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from core.health import Health, MeterState
from drivers.base import MeterReadError
from drivers.config import MeterConfig
from gateway.poller import Poller
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from tests.helpers.clock import ManualClock


class ScriptedReader:
    """A meter that answers after `delay` seconds, or fails with the errors queued for it."""

    def __init__(self, meter_id: str, delay: float = 0.0) -> None:
        self.meter_id = meter_id
        self.delay = delay
        self.failures: list[str] = []
        self.reads = 0

    async def read(self) -> dict[str, float]:
        await asyncio.sleep(self.delay)
        if self.failures:
            raise MeterReadError(self.failures.pop(0), "scripted failure")
        self.reads += 1
        return {"energy_active_import": float(self.reads), "power_active": 10.0}


def meter(meter_id: str, interval: float) -> MeterConfig:
    # offline meters are retried at their own interval here (tests/gateway/test_poller_offline.py
    # covers the slower offline schedule)
    return MeterConfig(
        id=meter_id, bus="b", model="sdm630", interval=interval, offline_retry_secs=interval
    )


async def run_for(poller: Poller, seconds: float) -> None:
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_samples_are_aligned_and_a_slow_meter_delays_no_other(tmp_path: Path) -> None:
    astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
    health = Health()
    fast = ScriptedReader("fast")
    slow = ScriptedReader("slow", delay=0.45)  # overruns its 0.2 s interval
    poller = Poller(
        [meter("fast", 0.2), meter("slow", 0.2)], {"fast": fast, "slow": slow}, astore, health
    )
    try:
        await run_for(poller, 1.3)
        rows = await astore.read("fast", 0)
    finally:
        await astore.aclose()
    stamps = [r.sample.ts_ms for r in rows]
    assert len(stamps) >= 5
    assert all(ts % 200 == 0 for ts in stamps), stamps
    assert all(b - a == 200 for a, b in itertools.pairwise(stamps)), stamps
    assert health.meter("slow").skipped_ticks >= 2
    assert 1 <= slow.reads <= 3


async def test_errors_are_counted_by_kind_and_state_recovers(tmp_path: Path) -> None:
    astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
    health = Health()
    reader = ScriptedReader("m")
    reader.failures = ["timeout", "timeout", "garbage"]
    poller = Poller([meter("m", 0.1)], {"m": reader}, astore, health)
    states: list[MeterState] = []

    async def watch() -> None:
        while True:
            state = health.meter("m").state
            if not states or states[-1] is not state:
                states.append(state)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        await run_for(poller, 0.75)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await astore.aclose()
    m = health.meter("m")
    assert dict(m.errors) == {"timeout": 2, "garbage": 1}
    assert states[-3:] == [MeterState.DEGRADED, MeterState.OFFLINE, MeterState.OK]
    assert m.reads >= 1 and m.consecutive_errors == 0 and m.last_values


async def test_nothing_is_stamped_while_the_clock_is_untrusted(tmp_path: Path) -> None:
    astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
    reader = ScriptedReader("m")
    health = Health()
    untrusted = ManualClock(speed=1.0, trusted=False)  # real time, never trusted
    poller = Poller([meter("m", 0.1)], {"m": reader}, astore, health, clock=untrusted)
    try:
        await run_for(poller, 0.35)
        assert await astore.call(astore.store.count) == 0
        # read on the monotonic clock and held (tests/gateway/clock/test_clock_integrity.py)
        assert reader.reads >= 3 and health.clock.held == reader.reads
    finally:
        await astore.aclose()
