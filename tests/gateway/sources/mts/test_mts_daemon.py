"""The daemon runs the MTS source from config: fake MTS -> store -> strict fake Wattics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.health import Health, MeterState
from gateway.config.loader import parse_config
from gateway.daemon import Daemon
from gateway.timefmt import local_iso8601_ms
from tests.fakes.mts import PERIOD_MS, FakeMts, default_energy_kwh
from tests.fakes.wattics import FakeWattics
from tests.fixtures.mts import METER_PASSWORD, REMOTE_ADDRESS, SERIAL, TOKEN
from tests.fixtures.wattics import PASSWORD, USERNAME

ZONE = "Australia/Adelaide"  # +10:30 / +09:30: catches fixed-offset and UTC/local mix-ups

CONFIG = """\
gateway: {{id: site-42, timezone: {zone}, data_dir: "{data_dir}", clock_check: none}}
sources:
  mts:
    base_url: "{mts_url}"
    token: ${{MTS_TOKEN}}
    poll_initial_secs: 50ms
    poll_max_secs: 200ms
    meters:
      hh1:
        meter_type: ELSTERA1700
        remote_address: "{remote}"
        serial_number: "{serial}"
        password: ${{MTS_METER_PASSWORD}}
        survey_days: 1
        immediate: true
        schedule: {{daily_at: "02:00"}}
uplinks:
  wattics:
    url: "{wattics_url}"
    username: {username}
    password: ${{WATTICS_PASSWORD}}
    retry_initial_secs: 0.05
    meters: {{hh1: {{id: stream-a}}}}
"""


async def test_daemon_forwards_an_mts_survey_to_wattics_in_order_with_its_timestamps(
    tmp_path: Path, fake_mts: FakeMts, fake_wattics: FakeWattics
) -> None:
    config = parse_config(
        CONFIG.format(
            zone=ZONE,
            data_dir=tmp_path,
            mts_url=fake_mts.url,
            remote=REMOTE_ADDRESS,
            serial=SERIAL,
            wattics_url=fake_wattics.url,
            username=USERNAME,
        ),
        "site.yaml",
        {"MTS_TOKEN": TOKEN, "MTS_METER_PASSWORD": METER_PASSWORD, "WATTICS_PASSWORD": PASSWORD},
    )
    health = Health()
    daemon = Daemon(config, health=health)
    task = asyncio.get_running_loop().create_task(daemon.run(), name="daemon")
    try:
        await fake_wattics.wait_accepted(48, timeout=10)
    finally:
        daemon.stop()
        async with asyncio.timeout(10):
            await task

    today = datetime.now(UTC).date()
    start = int(
        (datetime(today.year, today.month, today.day, tzinfo=UTC) - timedelta(days=1)).timestamp()
        * 1000
    )
    periods = [start + n * PERIOD_MS for n in range(48)]
    packets = fake_wattics.delivered("stream-a")
    assert [p["tsISO8601"] for p in packets] == [local_iso8601_ms(ts, ZONE) for ts in periods]
    assert [p["pC_1"] for p in packets] == [default_energy_kwh(ts) * 1000 for ts in periods]
    assert not fake_wattics.all_discarded()
    assert health.meter("hh1").state is MeterState.OK
    assert fake_mts.calls["test-request"] == 1
