"""The MTS source against the strict fake: request, poll, store; overlaps; what is reported."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.health import Health, MeterState
from gateway.sources.mts.state import NAMESPACE
from tests.fakes.mts import DAY_MS, PERIOD_MS, FakeMeter, FakeMts, default_energy_kwh
from tests.fixtures.mts import METER_PASSWORD, REMOTE_ADDRESS, SERIAL
from tests.gateway.sources.mts.mts_helpers import METER, opened_store, running, section
from tests.helpers.eventually import eventually


def yesterday_midnight_ms() -> int:
    today = datetime.now(UTC).date()
    start = datetime(today.year, today.month, today.day, tzinfo=UTC) - timedelta(days=1)
    return int(start.timestamp() * 1000)


async def test_a_test_is_requested_polled_and_its_survey_and_registers_stored(
    tmp_path: Path, fake_mts: FakeMts
) -> None:
    fake_mts.polls_until_done = 3
    health = Health()
    async with (
        opened_store(tmp_path) as astore,
        running(section(fake_mts), astore, health) as runtime,
    ):
        await eventually(lambda: astore.store.last_ts(f"{METER}-registers") is not None)
        await eventually(lambda: not runtime.state.pending, what="the test done")
        survey = astore.store.read(METER, 0, 1000)
        registers = astore.store.read(f"{METER}-registers", 0, 10)
        pending = await astore.state(NAMESPACE, "pending")

    # What was asked: the meter's parameters, a reference naming gateway and meter.
    (params,) = fake_mts.requested()
    assert params["requestReference"].startswith("site-42/hh1/")
    assert params["meterType"] == "ELSTERA1700"
    assert params["remoteAddress"] == REMOTE_ADDRESS
    assert params["serialNumber"] == SERIAL
    assert params["password"] == METER_PASSWORD
    assert params["surveyDays"] == 1
    assert params["immediate"] is True
    assert fake_mts.calls["test-status"] == 3  # PENDING twice, then the result
    # Yesterday's 48 half hours, in order, at their own (UTC) times, kWh -> Wh.
    start = yesterday_midnight_ms()
    assert [row.sample.ts_ms for row in survey] == [start + n * PERIOD_MS for n in range(48)]
    assert [row.sample.values["energy_active_import"] for row in survey] == [
        default_energy_kwh(start + n * PERIOD_MS) * 1000 for n in range(48)
    ]
    # The register snapshot at the real time of the read (meter clock minus its +10 s).
    (snapshot,) = registers
    assert abs(snapshot.sample.ts_ms - time.time() * 1000) < 10_000
    assert snapshot.sample.values["energy_active_export"] == 2_380_181_000.0
    assert snapshot.sample.values["power_active"] == -1_990_000.0
    register_kwh = snapshot.sample.values["energy_active_import"] / 1000
    assert abs(register_kwh - default_energy_kwh(snapshot.sample.ts_ms)) < 0.01
    # Health as the monitor publishes it; nothing pending any more.
    meter = health.meter(METER)
    assert meter.state is MeterState.OK
    assert meter.reads == 1
    assert meter.facts["serial_number"] == SERIAL
    assert meter.facts["clock_offset_s"] == 10
    assert meter.last_values["energy_active_import"] > 0
    assert pending == "{}"


async def test_consecutive_overlapping_surveys_are_stored_once_in_order(
    tmp_path: Path, fake_mts: FakeMts
) -> None:
    day = [0]
    fake_mts._now = lambda: time.time() + day[0] * 86_400  # MTS lives a day later each test
    config = section(fake_mts, meter={"survey_days": 2, "schedule": {"every": "300ms"}})
    async with opened_store(tmp_path) as astore, running(config, astore):
        await eventually(lambda: astore.store.count(METER) == 96, what="first survey")
        day[0] = 1
        await eventually(lambda: astore.store.count(METER) > 96, what="second survey")
        await eventually(lambda: len(fake_mts.tests) >= 3, what="a third test")
        survey = astore.store.read(METER, 0, 1000)
    start = yesterday_midnight_ms() - DAY_MS
    stamps = [row.sample.ts_ms for row in survey]
    assert stamps == [start + n * PERIOD_MS for n in range(144)]  # 96 + 48 new, none twice


async def test_error_results_serial_mismatch_and_clock_offset_are_reported(
    tmp_path: Path, fake_mts: FakeMts
) -> None:
    fake_mts.add_meter(FakeMeter("07777000001", outcome="ERROR: No dial tone"))
    fake_mts.add_meter(FakeMeter("07777000002", serial="999", reported_serial="111"))
    fake_mts.add_meter(FakeMeter("07777000003", serial="333", clock_offset_s=-300))
    meters = {
        "dead": {"remote_address": "07777000001"},
        "swapped": {"remote_address": "07777000002", "serial_number": "999"},
        "drifting": {"remote_address": "07777000003", "serial_number": "333"},
    }
    config = section(
        fake_mts,
        meters={
            name: {"meter_type": "ELSTERA1700", "immediate": True, **meter}
            for name, meter in meters.items()
        },
    )
    health = Health()
    async with opened_store(tmp_path) as astore, running(config, astore, health):
        await eventually(lambda: len(health.alerts) >= 3, what="three alerts")
        await eventually(lambda: health.meter("drifting").reads == 1)
        stored = {name: astore.store.count(name) for name in meters}

    dead = health.meter("dead")
    assert dead.state is MeterState.OFFLINE
    assert dead.errors["test_error"] == 1
    assert "No dial tone" in (dead.last_error or "")
    swapped = health.meter("swapped")
    assert swapped.state is MeterState.DEGRADED
    assert swapped.errors["serial_mismatch"] == 1
    assert stored["swapped"] == 0  # another meter's data is not stored under this one
    drifting = health.meter("drifting")
    assert drifting.state is MeterState.DEGRADED
    assert drifting.facts["clock_offset_s"] == -300
    assert drifting.errors["clock_offset"] == 1
    assert stored["drifting"] == 48
    messages = " | ".join(alert.message for alert in health.alerts)
    assert "No dial tone" in messages
    assert "mismatch" in messages
    assert "300 s behind" in messages
