"""The offline schedule (slower, doubling, aligned retries) and a dead unit on a shared RTU line
that never costs its live neighbour more than its own timeout."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from pathlib import Path

from core.health import Health, MeterHealth, MeterState
from drivers.base import MeterReadError
from drivers.config import MeterConfig
from drivers.modbus.reader import ModbusReader
from drivers.modbus.register_map import load_builtin
from drivers.modbus.transports import ModbusRtuBus
from gateway.poller import Poller, offline_backoff, retry_boundary
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from tests.fakes.modbus_device import SimulatedMeter, SimulatorServer
from tests.fixtures.modbus import SDM630_VALUES
from tests.fixtures.socat import PtyPair
from tests.helpers.clock import ManualClock

START = 1_800_000_000.0  # a multiple of every interval used here


class FlakyMeter:
    """Fails every read until `recovers_at` (virtual time); records when each read happened
    and what the meter's health said just before it."""

    def __init__(
        self, clock: ManualClock, health: MeterHealth, recovers_at: float, stop_after: int
    ) -> None:
        self.meter_id = "m"
        self.clock = clock
        self.health = health
        self.recovers_at = recovers_at
        self.stop_after = stop_after
        self.attempts: list[float] = []
        self.seen: list[tuple[MeterState, int | None]] = []
        self.done = asyncio.Event()

    async def read(self) -> dict[str, float]:
        self.attempts.append(self.clock.now - START)
        self.seen.append((self.health.state, self.health.next_attempt_ts_ms))
        if len(self.attempts) >= self.stop_after:
            self.done.set()
        if self.clock.now < self.recovers_at:
            raise MeterReadError("timeout", "no answer")
        return {"energy_active_import": 1000.0 + len(self.attempts)}


def test_offline_delays_start_at_one_minute_or_the_interval_and_double_to_the_cap() -> None:
    minute = MeterConfig(id="m", bus="b", model="sdm630", interval=15)
    retry = offline_backoff(minute)
    assert [retry.next_delay() for _ in range(5)] == [60, 120, 240, 300, 300]
    slow = MeterConfig(id="m", bus="b", model="sdm630", interval=900, offline_retry_max_secs=600)
    retry = offline_backoff(slow)
    assert [retry.next_delay() for _ in range(3)] == [900, 900, 900]
    # always on a boundary of the meter's interval, at least `delay` after the failed tick
    assert retry_boundary(1005.0, 60, 15, now=1005.5) == 1065.0
    assert retry_boundary(1005.0, 50, 15, now=1005.5) == 1065.0  # rounded up to a boundary
    assert retry_boundary(1005.0, 60, 15, now=1200.2) == 1215.0  # the read itself overran


async def test_an_offline_meter_is_retried_slower_and_resumes_its_schedule(
    tmp_path: Path,
) -> None:
    clock = ManualClock(START + 0.5)  # virtual time (one meter per test, so no races)
    health = Health()
    reader = FlakyMeter(clock, health.meter("m"), recovers_at=START + 700, stop_after=16)
    meter = MeterConfig(
        id="m", bus="b", model="x", interval=10, offline_retry_secs=60, offline_retry_max_secs=240
    )
    astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
    poller = Poller([meter], {"m": reader}, astore, health, clock=clock)
    task = asyncio.create_task(poller.run())
    try:
        async with asyncio.timeout(10):
            await reader.done.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        rows = await astore.read("m", 0)
    finally:
        await astore.aclose()
    # 3 failures in a row at the normal interval, then offline: +60, +120, +240, +240 ...
    assert reader.attempts[:8] == [10, 20, 30, 90, 210, 450, 690, 930]
    # ... the retry at 930 s succeeds, and the meter is back on every 10 s
    assert reader.attempts[8:] == [940 + 10 * i for i in range(len(reader.attempts) - 8)]
    states = [state for state, _ in reader.seen]
    assert states[:9] == [MeterState.UNKNOWN] + [MeterState.DEGRADED] * 2 + [
        MeterState.OFFLINE
    ] * 5 + [MeterState.OK]
    # while offline, health says when the next attempt is due
    due = [when for _, when in reader.seen[3:9]]
    assert due == [round((START + t) * 1000) for t in (90, 210, 450, 690, 930)] + [None]
    assert health.meter("m").next_attempt_ts_ms is None
    assert health.meter("m").skipped_ticks == 0  # slower retries are not overruns
    assert health.meter("m").errors["timeout"] == 7
    stamps = [r.sample.ts_ms / 1000 - START for r in rows]
    assert stamps[0] == 930 and all(b - a == 10 for a, b in itertools.pairwise(stamps))


class Lateness:
    """Wraps a reader: how long after its interval boundary each read finished.

    `head_start`: the read starts this much after the boundary, so that a meter woken at the
    same boundary always gets the line first (otherwise the order is up to the event loop).
    """

    def __init__(self, reader: ModbusReader, interval: float, head_start: float = 0.0) -> None:
        self.reader = reader
        self.meter_id = reader.meter_id
        self.interval = interval
        self.head_start = head_start
        self.late: list[float] = []

    async def read(self) -> dict[str, float]:
        boundary = math.floor(time.time() / self.interval) * self.interval
        await asyncio.sleep(self.head_start)
        values = await self.reader.read()
        self.late.append(time.time() - boundary)
        return values


async def test_a_dead_unit_on_the_line_costs_the_live_one_at_most_its_timeout(
    tmp_path: Path,
) -> None:
    interval, dead_timeout = 0.2, 0.12
    sdm630 = load_builtin("sdm630")
    live_device = SimulatedMeter(sdm630, unit_id=1)
    live_device.set_values(SDM630_VALUES)
    dead_device = SimulatedMeter(sdm630, unit_id=2)
    dead_device.unresponsive = True
    meters = [
        MeterConfig(
            id="dead",
            bus="rs485",
            model="sdm630",
            unit=2,
            interval=interval,
            timeout_secs=dead_timeout,
            offline_retry_secs=0.4,
            offline_retry_max_secs=0.4,
        ),
        MeterConfig(id="live", bus="rs485", model="sdm630", unit=1, interval=interval),
    ]
    health = Health()
    astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
    async with PtyPair(tmp_path) as pair:
        server = SimulatorServer([live_device, dead_device], serial_port=pair.device)
        await server.start()
        try:
            async with ModbusRtuBus(
                # 115200 baud: a timeout counts from when the answer could have crossed the
                # wire (drivers.modbus.bus), 16 ms here; at 9600 it would be 0.18 s on its own.
                "rs485",
                pair.gateway,
                baudrate=115200,
                timeout_secs=1.0,
                health=health.bus("rs485"),
            ) as bus:
                live = Lateness(
                    ModbusReader("live", bus, 1, sdm630, timeout_secs=1.0), interval, 0.01
                )
                dead = Lateness(
                    ModbusReader("dead", bus, 2, sdm630, timeout_secs=dead_timeout), interval
                )
                # a timeout counts from when the longest answer could have crossed the wire
                wire = (13 + 2 * 125) * bus.char_secs
                poller = Poller(meters, {"live": live, "dead": dead}, astore, health)
                task = asyncio.create_task(poller.run())
                await asyncio.sleep(2.0)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            rows = await astore.read("live", 0)
        finally:
            await server.stop()
            await astore.aclose()
    dead_health, live_health = health.meter("dead"), health.meter("live")
    stamps = [r.sample.ts_ms for r in rows]
    assert len(stamps) >= 8
    assert all(b - a == interval * 1000 for a, b in itertools.pairwise(stamps)), stamps
    assert live_health.skipped_ticks == 0 and not live_health.errors
    # every dead attempt was in flight when the live read came (see Lateness.head_start)
    assert dead_timeout <= max(live.late) <= dead_timeout + wire + 0.05, live.late
    assert dead_health.state is MeterState.OFFLINE
    # 3 attempts at the normal interval, then one per 0.4 s instead of one per 0.2 s
    assert 4 <= dead_health.errors["timeout"] <= 6
    assert health.buses["rs485"].errors["timeout"] == dead_health.errors["timeout"]
