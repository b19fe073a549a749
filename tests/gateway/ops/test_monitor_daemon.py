"""The whole daemon in-process while its MQTT broker goes away and comes back.

A simulated SDM630 is polled every 250 ms, the samples go through the store to the strict fake
Wattics, and the operations plane publishes to a real Mosquitto that is stopped and restarted
mid-run. The data path must not notice; the operator must see current state again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from core.health import Health
from drivers.simulator import SimulatedMeter
from gateway.config.schema import Config
from gateway.daemon import DB_FILE, Daemon
from gateway.store.database import Store
from tests.fakes.wattics import FakeWattics
from tests.fixtures.modbus import SDM630_VALUES
from tests.fixtures.mosquitto import MosquittoBroker
from tests.fixtures.wattics import PASSWORD, USERNAME
from tests.gateway.ops.test_monitor import Subscriber, retained, retained_under
from tests.helpers.eventually import eventually

INTERVAL_S = 0.25
BASE = "test-gw/site-1"
STREAM = "stream-a"


def site_config(tmp_path: Path, modbus_port: int, wattics: FakeWattics, mqtt_port: int) -> Config:
    return Config.model_validate(
        {
            "gateway": {
                "id": "site-1",
                "timezone": "Europe/Dublin",
                "data_dir": str(tmp_path),
                "clock_check": "none",  # this test box's clock may not be NTP-synced
            },
            "buses": {
                "plant": {
                    "type": "modbus-tcp",
                    "host": "127.0.0.1",
                    "port": modbus_port,
                    "timeout_secs": 0.5,
                }
            },
            "meters": [{"id": "incomer", "bus": "plant", "model": "sdm630", "interval": "250ms"}],
            "uplinks": {
                "wattics": {
                    "url": wattics.url,
                    "username": USERNAME,
                    "password": PASSWORD,
                    "retry_initial_secs": 0.05,
                    "retry_max_secs": 0.2,
                    "commit_every_secs": 0.1,
                    "meters": {"incomer": {"id": STREAM}},
                }
            },
            "mqtt": {
                "host": "127.0.0.1",
                "port": mqtt_port,
                "topic_prefix": "test-gw",
                "keepalive_secs": 5,
                "publish_interval_secs": 0.2,
                "reconnect_max_secs": 0.2,
                "homeassistant_discovery": True,
                "publish_values": True,
                "commands": {"read": True},
            },
        }
    )


@contextlib.asynccontextmanager
async def daemon_running(config: Config, health: Health) -> AsyncIterator[Daemon]:
    daemon = Daemon(config, health=health)
    ready = asyncio.Event()

    async def on_ready() -> None:
        ready.set()

    task = asyncio.create_task(daemon.run(on_ready), name="daemon-under-test")
    started = asyncio.create_task(ready.wait(), name="daemon-ready")
    try:
        await asyncio.wait({task, started}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if task.done():
            task.result()  # the daemon failed to start: show why
        assert ready.is_set(), "the daemon did not get ready within 5 s"
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)


def delivered_ms(wattics: FakeWattics) -> list[int]:
    return [
        round(datetime.fromisoformat(str(p["tsISO8601"])).timestamp() * 1000)
        for p in wattics.delivered(STREAM)
    ]


def state(payload: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(payload)
    return data


@pytest.mark.timeout(30)
async def test_broker_restart_mid_run_loses_no_sample_and_state_comes_back_current(
    tmp_path: Path,
    sdm630_server: tuple[int, SimulatedMeter],
    fake_wattics: FakeWattics,
    mosquitto: MosquittoBroker,
) -> None:
    health = Health()
    config = site_config(tmp_path, sdm630_server[0], fake_wattics, mosquitto.port)
    async with daemon_running(config, health):
        async with Subscriber(mosquitto) as operator:
            await operator.until(f"{BASE}/status", "online")
            values = state(await operator.until(f"{BASE}/meters/incomer/values", lambda _: True))
            assert values["values"]["voltage_l1"] == SDM630_VALUES["voltage_l1"]
            uplink = state(
                await operator.until(
                    f"{BASE}/uplinks/wattics/state", lambda p: state(p)["delivered"] >= 2
                )
            )
            assert uplink["backlog_rows"] is not None  # measured from the store
            gateway = state(await operator.until(f"{BASE}/state", lambda _: True))
            assert gateway["store_budget_bytes"] == 1024 * 1024 * 1024
            assert gateway["store_bytes"] > 0

        await asyncio.to_thread(mosquitto.stop)
        outage_from = len(fake_wattics.delivered(STREAM))
        # While the broker is away the data path carries on at full rate.
        await eventually(
            lambda: len(fake_wattics.delivered(STREAM)) >= outage_from + 3, timeout=3.0
        )
        await asyncio.to_thread(mosquitto.start)

        async with Subscriber(mosquitto) as operator:
            await operator.until(f"{BASE}/status", "online")
            reads_now = health.meter("incomer").reads
            await operator.until(
                f"{BASE}/meters/incomer/state", lambda p: state(p)["reads"] >= reads_now
            )
            await operator.until(
                f"{BASE}/uplinks/wattics/state",
                lambda p: state(p)["delivered"] >= outage_from + 3,
            )
        # A newcomer is handed current retained state and the discovery configs again.
        meter = state(await retained(mosquitto, f"{BASE}/meters/incomer/state"))
        assert meter["state"] == "ok" and meter["reads"] >= reads_now
        assert meter["values"]["energy_active_import"] == SDM630_VALUES["energy_active_import"]
        assert meter["units"]["energy_active_import"] == "Wh"
        assert await retained(mosquitto, f"{BASE}/status") == "online"
        discovery = await retained_under(mosquitto, "homeassistant/#")
        assert any(t.endswith("/meter_incomer_energy_active_import/config") for t in discovery)
        # Let delivery catch up with polling before stopping.
        await eventually(
            lambda: len(fake_wattics.delivered(STREAM)) >= health.meter("incomer").reads,
            timeout=3.0,
        )
        caught_up = len(fake_wattics.delivered(STREAM))
    assert await retained(mosquitto, f"{BASE}/status") == "offline"

    with Store(tmp_path / DB_FILE) as store:
        stored = [s.sample.ts_ms for s in store.read("incomer", 0, limit=10_000)]
    sent = delivered_ms(fake_wattics)
    assert fake_wattics.rejected == [] and fake_wattics.all_discarded() == []
    assert sent == stored[: len(sent)]  # every stored sample, in order, none twice
    assert len(sent) >= caught_up
    assert len(stored) - len(sent) <= 1  # at most one read after the last check, not yet sent
    assert len(stored) >= outage_from + 3
