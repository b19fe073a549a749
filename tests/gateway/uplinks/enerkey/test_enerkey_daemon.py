"""The daemon runs the EnerKey uplink from config: simulated SDM630 -> store -> strict fake."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from core.health import Health
from core.sample import Sample
from drivers.simulator import SimulatedMeter
from gateway.config.loader import parse_config
from gateway.daemon import DB_FILE, Daemon
from gateway.store.database import Store
from gateway.timefmt import HOUR_MS, floor_hour_ms
from tests.fakes.enerkey import FakeEnerKey
from tests.fixtures.enerkey import KEY_A, KEY_B

CONFIG = """\
gateway: {{id: e2e, timezone: Europe/Helsinki, data_dir: "{data_dir}", clock_check: none}}
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: {modbus_port}, timeout_secs: 1.0}}
meters:
  - {{id: incomer, bus: plant, unit: 1, model: sdm630, interval_secs: 1s}}
uplinks:
  enerkey:
    base_url: "{url}"
    api_keys: ["${{ENERKEY_KEY_A}}", "${{ENERKEY_KEY_B}}"]
    retry_initial_secs: 0.05
    meters: {{incomer: {{meter_id: 4711, unit: kWh}}}}
"""


async def test_daemon_pushes_hourly_readings_of_stored_history_and_stops_cleanly(
    tmp_path: Path, sdm630_server: tuple[int, SimulatedMeter], fake_enerkey: FakeEnerKey
) -> None:
    modbus_port, _ = sdm630_server
    # Three hours of history the gateway stored before (e.g. while EnerKey was unreachable),
    # below the simulated register (12 345 500 Wh), so the live samples continue the counter.
    now_ms = int(time.time() * 1000)
    first_hour = floor_hour_ms(now_ms) - 3 * HOUR_MS
    with Store(tmp_path / DB_FILE) as store:
        store.append(
            [
                Sample(
                    "incomer", ts, {"energy_active_import": 12_000_000.0 + (ts - first_hour) / 1e3}
                )
                for ts in range(first_hour - 5 * 60_000 + 3_000, now_ms - 60_000, 60_000)
            ]
        )
    config = parse_config(
        CONFIG.format(data_dir=tmp_path, modbus_port=modbus_port, url=fake_enerkey.url),
        "site.yaml",
        {"ENERKEY_KEY_A": KEY_A, "ENERKEY_KEY_B": KEY_B},
    )
    health = Health()
    daemon = Daemon(config, health=health)
    task = asyncio.get_running_loop().create_task(daemon.run(), name="daemon")
    try:
        await fake_enerkey.wait_hours(4711, 3, timeout=10)
    finally:
        daemon.stop()
        async with asyncio.timeout(10):
            await task

    hours = fake_enerkey.hours(4711)
    assert sorted(hours)[:3] == [first_hour + n * HOUR_MS for n in range(3)]
    assert hours[first_hour] == round(12_000.0, 6)  # interpolated, in kWh
    assert health.uplink("enerkey").delivered >= 3
    assert health.uplink("enerkey").facts["key"] == "A"
