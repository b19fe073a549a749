"""EnerKey: how fast hourly readings are decided, and how fast a long backlog is caught up.

`decide`: samples fed to gateway.uplinks.enerkey.hourly from the store (1-minute samples,
never on the hour, so every hour is interpolated). `catchup`: the whole uplink, store to the
strict local fake, for `days` of 1-minute samples of one meter (a long outage of EnerKey or
the network).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from core.health import Health
from core.sample import Sample
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from gateway.uplinks.enerkey.config import EnerKeyConfig
from gateway.uplinks.enerkey.hourly import Event, HourlyReadings
from gateway.uplinks.enerkey.uplink import EnerKeyUplink
from tests.fakes.enerkey import FakeEnerKey

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE_MS = 60_000
KEY = "bench-key"


def _fill(store: Store, days: int) -> int:
    total = days * 1440
    batch = 10_000
    for first in range(0, total, batch):
        store.append(
            [
                Sample(
                    "m1",
                    START_MS + 7_000 + i * MINUTE_MS,
                    {"energy_active_import": 1e6 + i * 120.0, "power_active": 7200.0},
                )
                for i in range(first, min(total, first + batch))
            ]
        )
    return total


def _decide(store: Store) -> tuple[int, int]:
    readings = HourlyReadings("energy_active_import", 15 * MINUTE_MS)
    events: list[Event] = []
    after = 0
    fed = 0
    while batch := store.read("m1", after, 2000):
        for stored in batch:
            readings.feed(stored, events)
        fed += len(batch)
        after = batch[-1].rowid
    return fed, len(events)


async def _catchup(path: Path, hours: int) -> float:
    astore = AsyncStore(Store(path))
    try:
        async with FakeEnerKey({"A": KEY}, {4711}) as fake:
            config = EnerKeyConfig.model_validate(
                {
                    "base_url": fake.url,
                    "api_keys": [KEY],
                    "meters": {"m1": {"meter_id": 4711, "unit": "kWh"}},
                }
            )
            uplink = EnerKeyUplink(config, store=astore, health=Health())
            began = time.perf_counter()
            task = asyncio.get_running_loop().create_task(uplink.run())
            try:
                await fake.wait_hours(4711, hours, timeout=600)
                elapsed = time.perf_counter() - began
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await astore.aclose()
    return elapsed


def measure_enerkey(days: int = 90) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "b.sqlite3"
        with Store(path) as store:
            samples = _fill(store, days)
            began = time.perf_counter()
            fed, hours = _decide(store)
            decide_s = time.perf_counter() - began
        catchup_s = asyncio.run(_catchup(path, hours))
    assert fed == samples
    return {
        "samples_per_s": fed / decide_s,
        "hours_per_s": hours / decide_s,
        "catchup_s": catchup_s,
        "catchup_hours": hours,
        "days": days,
    }
