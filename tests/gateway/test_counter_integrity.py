"""Counter integrity: a register that goes down (meter replaced, rollover, reset) or leaps beyond
the meter's power is flagged on the stored sample, counted in health and alerted with numbers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.flags import CLOCK_UNSYNCED, COUNTER_JUMP, COUNTER_RESET
from core.health import Health
from core.sample import Sample
from drivers.config import MeterConfig
from gateway.counters import CounterGuard
from gateway.poller import Poller
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store

ENERGY = "energy_active_import"


class RegisterMeter:
    """Answers the queued register values in turn (then the last one again)."""

    def __init__(self, meter_id: str, values: list[float]) -> None:
        self.meter_id = meter_id
        self.values = list(values)
        self.reads = 0
        self.done = asyncio.Event()

    async def read(self) -> dict[str, float]:
        value = self.values[min(self.reads, len(self.values) - 1)]
        self.reads += 1
        if self.reads >= len(self.values):
            self.done.set()
        return {ENERGY: value, "voltage_l1": 230.0 - self.reads}


@pytest.fixture
async def astore(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
    yield astore
    await astore.aclose()


async def poll(astore: AsyncStore, health: Health, meter: MeterConfig, values: list[float]) -> None:
    reader = RegisterMeter(meter.id, values)
    task = asyncio.get_running_loop().create_task(
        Poller([meter], {meter.id: reader}, astore, health).run()
    )
    try:
        await asyncio.wait_for(reader.done.wait(), 5.0)
        await asyncio.sleep(0.05)  # the last append
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def stored(astore: AsyncStore, meter: str) -> list[tuple[float, frozenset[str]]]:
    rows = await astore.read(meter, 0, 1000)
    return [(row.sample.values[ENERGY], row.sample.flags) for row in rows]


def meter(**fields: object) -> MeterConfig:
    return MeterConfig(id="m", bus="b", model="sdm630", interval=0.1, **fields)  # type: ignore[arg-type]


async def test_a_replaced_meter_is_flagged_counted_and_alerted_with_the_numbers(
    astore: AsyncStore,
) -> None:
    health = Health()
    await poll(astore, health, meter(), [5000.0, 5010.0, 20.0, 30.0])
    rows = await stored(astore, "m")
    assert rows[:4] == [
        (5000.0, frozenset()),
        (5010.0, frozenset()),
        (20.0, frozenset({COUNTER_RESET})),  # the new meter's register
        (30.0, frozenset()),  # compared with the new series: fine
    ]
    assert all(flags == frozenset() for _, flags in rows[4:])
    m = health.meter("m")
    assert (m.counter_resets, m.counter_jumps) == (1, 0)
    (alert,) = [a.message for a in health.alerts if a.source == "counters"]
    assert "energy_active_import went from 5010 Wh" in alert and "to 20 Wh" in alert
    assert "counter_reset" in alert and alert == m.last_counter_problem


async def test_the_comparison_continues_from_the_store_after_a_restart(
    astore: AsyncStore,
) -> None:
    earlier = Sample("m", round(time.time() * 1000) - 10_000, {ENERGY: 9000.0})
    await astore.append([earlier])
    health = Health()
    await poll(astore, health, meter(), [120.0, 130.0])
    rows = await stored(astore, "m")
    assert rows[:3] == [
        (9000.0, frozenset()),
        (120.0, frozenset({COUNTER_RESET})),
        (130.0, frozenset()),
    ]
    assert health.meter("m").counter_resets == 1


async def test_a_rise_beyond_the_meters_maximum_power_is_flagged_only_when_configured(
    astore: AsyncStore,
) -> None:
    health = Health()
    # 3.6 kW: at most 1 Wh per second (+ 300 s of slack): a million Wh in 0.1 s is absurd
    await poll(astore, health, meter(max_power_w=3600), [1000.0, 1001.0, 1_001_001.0, 1_001_002.0])
    rows = await stored(astore, "m")
    assert [flags for _, flags in rows[:4]] == [
        frozenset(),
        frozenset(),
        frozenset({COUNTER_JUMP}),
        frozenset(),
    ]
    assert health.meter("m").counter_jumps == 1
    (alert,) = [a.message for a in health.alerts if a.source == "counters"]
    assert "from 1001 Wh" in alert and "to 1.001e+06 Wh" in alert and "maximum of 300" in alert


def test_without_max_power_only_decreases_are_checked() -> None:
    guard = CounterGuard("m")
    t = 1_800_000_000_000
    guard.seed(Sample("m", t, {ENERGY: 1000.0}))
    checked, problems = guard.check(Sample("m", t + 1000, {ENERGY: 1e12}))
    assert checked.flags == frozenset() and problems == []


def test_coarse_registers_slack_volumes_and_unknown_times() -> None:
    t = 1_800_000_000_000
    guard = CounterGuard("m", max_power_w=1000)
    guard.seed(Sample("m", t, {ENERGY: 5000.0, "gas_volume": 12.5}))
    # a 0.1 kWh register quiet for a minute, then one 100 Wh step: within 1 kW × (60 s + slack)
    for second in range(1, 61):
        guard.check(Sample("m", t + second * 1000, {ENERGY: 5000.0, "gas_volume": 12.5}))
    checked, _ = guard.check(Sample("m", t + 61_000, {ENERGY: 5100.0, "gas_volume": 900.0}))
    assert checked.flags == frozenset()  # gas has no power bound either
    # a volume that goes down is a reset like any counter
    checked, problems = guard.check(Sample("m", t + 62_000, {ENERGY: 5100.0, "gas_volume": 1.0}))
    assert checked.flags == {COUNTER_RESET} and problems[0].channel == "gas_volume"
    # an untimed sample (clock_unsynced) cannot be judged for speed, only for direction
    untimed = Sample("m", t + 63_000, {ENERGY: 9e9}, frozenset({CLOCK_UNSYNCED}))
    checked, _ = guard.check(untimed)
    assert checked.flags == {CLOCK_UNSYNCED}
    # a real leap is flagged and keeps the flags it had
    checked, problems = guard.check(Sample("m", t + 64_000, {ENERGY: 9e9 + 1e6}))
    assert checked.flags == frozenset()  # compared with the untimed baseline: no speed check
    checked, problems = guard.check(Sample("m", t + 65_000, {ENERGY: 9e10}))
    assert checked.flags == {COUNTER_JUMP} and problems[0].limit == pytest.approx(83.611, abs=1e-3)


async def test_a_head_end_sources_counter_that_goes_down_is_flagged_and_alerted(
    tmp_path: Path,
) -> None:
    """A meter swapped behind MTS or Locus: its survey's register drops. The source's samples
    get the same check as polled ones; the baseline is the newest stored sample."""
    from gateway.sources.base import SourceCounters, store_new_samples

    astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
    try:
        await astore.append([Sample("mts-1", 1_000, {"energy_active_import": 5_000.0})])
        health = Health()
        counters = SourceCounters(astore, health)  # a fresh runtime: seeded from the store
        survey = [
            Sample("mts-1", 2_000, {"energy_active_import": 5_100.0}),
            Sample("mts-1", 3_000, {"energy_active_import": 12.0}),  # the new meter
            Sample("mts-1", 4_000, {"energy_active_import": 40.0}),
        ]
        stored = await store_new_samples(astore, survey, counters)
        rows = await astore.read("mts-1", 0)
    finally:
        await astore.aclose()
    assert [sorted(s.flags) for s in stored] == [[], ["counter_reset"], []]
    assert [sorted(r.sample.flags) for r in rows][1:] == [[], ["counter_reset"], []]
    assert health.meter("mts-1").counter_resets == 1
    assert "went from 5100" in (health.meter("mts-1").last_counter_problem or "")
