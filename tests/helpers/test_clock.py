"""The manual clock the suite runs the gateway on (tests/helpers/clock.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.helpers.clock import ManualClock


async def test_virtual_time_moves_only_when_set_advanced_or_slept() -> None:
    clock = ManualClock(1_000.0)
    assert clock.time() == clock.monotonic() == clock.now == 1_000.0
    await asyncio.sleep(0.01)
    assert clock.now == 1_000.0
    await clock.sleep(30)
    clock.advance(5)
    clock.now += 0.5
    assert clock.time() == clock.monotonic() == 1_035.5
    clock.now = 900.0  # setting it is exact, backwards too
    assert clock.time() == clock.monotonic() == 900.0
    assert clock.sleeps == 1 and clock.trusted()


async def test_a_stepped_wall_clock_leaves_monotonic_time_alone() -> None:
    clock = ManualClock(2_000.0, monotonic=10.0, trusted=False)
    assert (clock.time(), clock.monotonic(), clock.trusted()) == (2_000.0, 10.0, False)
    clock.step_wall(-3_600)
    clock.set_wall(clock.time() + 1)
    assert (clock.time(), clock.monotonic()) == (2_000.0 - 3_599, 10.0)
    clock.advance(2)
    assert (clock.time(), clock.monotonic()) == (2_000.0 - 3_597, 12.0)


async def test_stop_at_holds_the_sleeper_there() -> None:
    clock = ManualClock(0.0, stop_at=100.0)

    async def loop() -> None:
        while True:
            await clock.sleep(30)

    task = asyncio.create_task(loop())
    async with asyncio.timeout(1):
        await clock.reached.wait()
    assert clock.now == 120.0 and clock.sleeps == 4
    await asyncio.sleep(0.01)
    assert clock.sleeps == 4 and not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_fast_clock_runs_speed_times_real_time() -> None:
    clock = ManualClock(speed=100.0)
    assert clock.time() == pytest.approx(time.time(), abs=0.05)
    before = time.monotonic()
    wall, mono = clock.time(), clock.monotonic()
    inner_start = time.monotonic()
    await clock.sleep(10)  # 0.1 s of real time
    inner_end = time.monotonic()
    wall_moved, mono_moved = clock.time() - wall, clock.monotonic() - mono
    after = time.monotonic()
    assert (inner_end - inner_start) * 100 - 1e-6 <= mono_moved <= (after - before) * 100 + 1e-6
    assert (inner_end - inner_start) * 100 - 1e-6 <= wall_moved <= (after - before) * 100 + 1e-6
    assert 0.1 <= inner_end - inner_start < 0.5


def test_options_that_cannot_work_together_are_refused() -> None:
    with pytest.raises(ValueError):
        ManualClock(speed=-1)
    with pytest.raises(ValueError):
        ManualClock(speed=2, stop_at=10.0)
