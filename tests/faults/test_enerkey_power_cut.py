"""A power cut while EnerKey consumption is being pushed (issue 16 #13, issue 14 #11).

Seen before: the whole message (119 hours, 714 kWh) was sent again after the restart and
EnerKey, which SUMS values of one hour, then held 1,428 kWh; no log line, alert or count.
Now the uplink records the message "in flight" before sending it; after the restart it finds
that record, does not send the message again (it cannot know whether EnerKey took it), holds
it in the dead-letter table for a human, alerts, counts it, and goes on with the hours after.
The daemon is a real process killed with SIGKILL while the fake holds its answer.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.sample import Sample
from gateway.daemon import DB_FILE
from gateway.store.database import Store
from gateway.timefmt import HOUR_MS, floor_hour_ms
from tests.fakes.enerkey import FakeEnerKey
from tests.faults.conftest import DaemonProcess
from tests.fixtures.enerkey import KEY_A, KEY_B, KEYS, METERS
from tests.helpers.eventually import eventually

#: Samples span this many hours: 119 hours of consumption (readings at hours 1..120), one message.
HOURS = 121

CONFIG = """\
gateway: {{id: cut, timezone: UTC, data_dir: "{data_dir}", clock_check: none}}
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: 9, timeout_secs: 0.2}}
meters:
  - {{id: incomer, bus: plant, unit: 1, model: sdm630, interval_secs: 60s}}
uplinks:
  enerkey:
    base_url: "{url}"
    api_keys: ["${{ENERKEY_KEY_A}}", "${{ENERKEY_KEY_B}}"]
    retry_initial_secs: 0.05
    timeout_secs: 30
    shutdown_grace_secs: 0.2
    meters: {{incomer: {{meter_id: 4711, mode: consumption, unit: kWh}}}}
"""


def _seed(db: Path, first_hour: int) -> None:
    """Six kWh an hour for HOURS hours, a sample every ten minutes (never on the hour)."""
    with Store(db) as store:
        store.append(
            [
                Sample("incomer", ts, {"energy_active_import": 1e6 + (ts - first_hour) / 600.0})
                for ts in range(first_hour + 7_000, first_hour + HOURS * HOUR_MS, 600_000)
            ]
        )


def _dead_letters(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        rows = connection.execute(
            "SELECT stream, status, body FROM dead_letters WHERE uplink = 'enerkey'"
        ).fetchall()
    connection.close()
    return rows


@pytest.mark.timeout(60)
async def test_power_cut_mid_push_never_sends_consumption_twice(
    tmp_path: Path, daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess]
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    first_hour = floor_hour_ms(int(time.time() * 1000)) - (HOURS + 2) * HOUR_MS
    _seed(data_dir / DB_FILE, first_hour)
    async with FakeEnerKey(KEYS, set(METERS)) as fake:
        config = tmp_path / "site.yaml"
        config.write_text(CONFIG.format(data_dir=data_dir, url=fake.url))
        daemon = daemon_factory(config, {"ENERKEY_KEY_A": KEY_A, "ENERKEY_KEY_B": KEY_B})
        fake.process_then_hang(1)
        await daemon.start()
        await eventually(lambda: len(fake.pushes) == 1, timeout=20, what="the first push")
        taken = fake.hours(4711, "consumption")
        assert len(taken) == HOURS - 2
        assert sum(taken.values()) == pytest.approx(6.0 * (HOURS - 2), abs=1e-6)
        assert await daemon.kill9() == -9  # the power cut: EnerKey has it, the gateway not

        await daemon.start()
        await daemon.wait_running()
        fake.release()
        await eventually(
            lambda: "outcome unknown" in daemon.log_text(), timeout=15, what="the held message"
        )
        await asyncio.sleep(0.5)  # time enough to (wrongly) send it again
        assert await daemon.stop() == 0

    assert len(fake.pushes) == 1, "the message was sent again after the restart"
    assert fake.duplicates() == []
    assert sum(fake.hours(4711, "consumption").values()) == pytest.approx(6.0 * (HOURS - 2))
    ((stream, status, body),) = _dead_letters(data_dir / DB_FILE)
    assert (stream, status) == ("4711", None)
    assert "outcome unknown" in body
    log = daemon.log_text()
    assert "119 hour(s)" in log and "not sent again" in log
