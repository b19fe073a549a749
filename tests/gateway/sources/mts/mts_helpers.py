"""Shared set-up of the MTS source tests: a config, a real store, a running source."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from core.health import Health
from gateway.sources.mts.config import MtsConfig
from gateway.sources.mts.source import MtsRuntime
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from tests.fakes.mts import FakeMts
from tests.fixtures.mts import METER_PASSWORD, REMOTE_ADDRESS, SERIAL, TOKEN

METER = "hh1"


def section(fake: FakeMts, **overrides: Any) -> MtsConfig:
    """A fast MTS section for meter `hh1` on the fixture's fake; tested at once when started."""
    meter: dict[str, Any] = {
        "meter_type": "ELSTERA1700",
        "remote_address": REMOTE_ADDRESS,
        "outstation_address": "1",
        "serial_number": SERIAL,
        "password": METER_PASSWORD,
        "survey_days": 1,
        "immediate": True,
        "schedule": {"daily_at": "02:00"},
    }
    meter.update(overrides.pop("meter", {}))
    data: dict[str, Any] = {
        "base_url": fake.url,
        "token": TOKEN,
        "meters": {METER: meter},
        "poll_initial_secs": 0.02,
        "poll_max_secs": 0.1,
        "retry_initial_secs": 0.02,
        "retry_max_secs": 0.1,
        "auth_probe_secs": 0.2,
        "timeout_secs": 5,
    }
    data.update(overrides)
    return MtsConfig.model_validate(data)


@asynccontextmanager
async def opened_store(path: Path) -> AsyncIterator[AsyncStore]:
    astore = AsyncStore(Store(path / "gateway.sqlite3"))
    try:
        yield astore
    finally:
        await astore.aclose()


@asynccontextmanager
async def running(
    config: MtsConfig, astore: AsyncStore, health: Health | None = None
) -> AsyncIterator[MtsRuntime]:
    """The source running as the daemon runs it; cancelled (and awaited) on the way out."""
    runtime = MtsRuntime(
        config,
        store=astore,
        health=health or Health(),
        gateway_id="site-42",
        timezone="Europe/London",
    )
    task = asyncio.get_running_loop().create_task(runtime.run(), name="source-mts")
    try:
        yield runtime
        assert not task.done(), "the source stopped by itself"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
