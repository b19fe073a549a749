"""The EnerKey uplink end to end: a real temp-dir store, the strict fake on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from core.health import Health
from core.sample import Sample
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from gateway.timefmt import HOUR_MS
from gateway.uplinks.enerkey import delivered as hours_table
from gateway.uplinks.enerkey.config import EnerKeyConfig
from gateway.uplinks.enerkey.messages import state_key
from gateway.uplinks.enerkey.uplink import EnerKeyUplink
from tests.fakes.enerkey import FakeEnerKey
from tests.fixtures.enerkey import KEY_A, KEY_B
from tests.helpers.eventually import eventually

CHANNEL = "energy_active_import"
#: 2024-06-01T00:00:00Z
T0 = 1_717_200_000_000
MIN = 60_000


def counter(ts_ms: int) -> float:
    """The meter's register in Wh: a steady 7.2 kW (7.2 kWh every hour)."""
    return 1_000_000.0 + (ts_ms - T0) / 1000 * 2.0


def kwh(hour_ms: int) -> float:
    return round(counter(hour_ms) / 1000, 6)


def hour(n: int) -> int:
    return T0 + n * HOUR_MS


def samples(
    meter: str,
    start: int,
    end: int,
    *,
    step: int = MIN,
    offset: int = 7_000,
    value: Callable[[int], float] = counter,
) -> list[Sample]:
    """One sample every `step`, `offset` after the boundary (never on an hour), start..end."""
    return [
        Sample(meter, ts, {CHANNEL: value(ts), "power_active": 7200.0})
        for ts in range(start + offset, end, step)
    ]


@pytest.fixture
async def astore(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    astore = AsyncStore(Store(tmp_path / "queue.db"))
    yield astore
    await astore.aclose()


async def append(astore: AsyncStore, items: list[Sample]) -> None:
    ids = await astore.append(items)
    assert None not in ids


def make_config(fake: FakeEnerKey, meters: dict[str, Any], **overrides: Any) -> EnerKeyConfig:
    settings: dict[str, Any] = {
        "base_url": fake.url,
        "api_keys": [KEY_A, KEY_B],
        "meters": {
            meter: {"unit": "kWh", **target}
            if isinstance(target, dict)
            else {"meter_id": target, "unit": "kWh"}
            for meter, target in meters.items()
        },
        "timeout_secs": 2.0,
        "retry_initial_secs": 0.01,
        "retry_max_secs": 0.05,
        "auth_probe_secs": 0.05,
        "rate_limit_per_day": 10_000_000,
        "rate_limit_burst": 10_000,
        **overrides,
    }
    return EnerKeyConfig.model_validate(settings)


def uplink_for(
    fake: FakeEnerKey,
    astore: AsyncStore,
    health: Health,
    meters: dict[str, Any],
    *,
    timezone: str = "UTC",
    **overrides: Any,
) -> EnerKeyUplink:
    return EnerKeyUplink(
        make_config(fake, meters, **overrides), store=astore, health=health, timezone=timezone
    )


@contextlib.asynccontextmanager
async def running(uplink: EnerKeyUplink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.get_running_loop().create_task(uplink.run(), name="uplink-under-test")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def alerts(health: Health) -> list[str]:
    return [a.message for a in health.alerts]


def expected(hours: range | list[int]) -> dict[int, float]:
    return {hour(n): kwh(hour(n)) for n in hours}


# -- cumulative readings ------------------------------------------------------------------------


async def test_backlog_and_live_hours_arrive_exactly_once_one_meter_per_message(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    health = Health()
    await append(astore, samples("incomer", T0, hour(6) + MIN))
    await append(astore, samples("pv", T0, hour(6) + MIN, offset=23_000))
    uplink = uplink_for(fake_enerkey, astore, health, {"incomer": 4711, "pv": 4712})
    async with running(uplink):
        await fake_enerkey.wait_hours(4711, 6)
        await fake_enerkey.wait_hours(4712, 6)
        assert len(fake_enerkey.pushes) == 2  # the whole backlog of a meter in one message
        await append(astore, samples("incomer", hour(6) + MIN, hour(7) + MIN))
        await fake_enerkey.wait_hours(4711, 7)

    assert fake_enerkey.hours(4711) == pytest.approx(expected(range(1, 8)), abs=1e-6)
    assert fake_enerkey.hours(4712) == pytest.approx(expected(range(1, 7)), abs=1e-6)
    assert fake_enerkey.duplicates() == []
    first = fake_enerkey.pushes[0]
    assert first.operation == "cumulative"
    assert first.stamps[:2] == ["2024-06-01T01:00:00Z", "2024-06-01T02:00:00Z"]
    assert [p.key for p in fake_enerkey.pushes] == ["A"] * len(fake_enerkey.pushes)
    assert fake_enerkey.rejected == []
    facts = health.uplink("enerkey").facts
    assert facts["calls_left"] == fake_enerkey.remaining("A")
    assert facts["key"] == "A"
    assert facts["last_hour"]["incomer"] == "2024-06-01T07:00:00Z"
    assert health.uplink("enerkey").delivered == 13


@pytest.mark.parametrize(("unit", "divisor"), [("Wh", 1.0), ("kWh", 1e3), ("MWh", 1e6)])
async def test_units_are_converted_from_stored_wh(
    fake_enerkey: FakeEnerKey, astore: AsyncStore, unit: str, divisor: float
) -> None:
    await append(astore, samples("incomer", T0, hour(2) + MIN, offset=0))
    meters = {"incomer": {"meter_id": 4711, "unit": unit}}
    uplink = uplink_for(fake_enerkey, astore, Health(), meters)
    async with running(uplink):
        await fake_enerkey.wait_hours(4711, 3)
    assert fake_enerkey.hours(4711) == {
        hour(n): round(counter(hour(n)) / divisor, 6) for n in range(3)
    }


async def test_a_five_hour_meter_outage_is_left_out_and_alerted(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    health = Health()
    before = samples("incomer", T0, hour(10) + 7 * MIN + 1)
    # A 13-minute hole around 04:00 is within the 15-minute tolerance_secs: 04:00 is interpolated.
    before = [s for s in before if not hour(4) - 6 * MIN < s.ts_ms < hour(4) + 6 * MIN]
    after = samples("incomer", hour(15) + 10 * MIN, hour(17) + 30 * MIN, offset=0)
    await append(astore, before + after)
    uplink = uplink_for(fake_enerkey, astore, health, {"incomer": 4711})
    async with running(uplink):
        await fake_enerkey.wait_hours(4711, 12)
        await asyncio.sleep(0.05)

    assert sorted(fake_enerkey.hours(4711)) == [hour(n) for n in (*range(1, 11), 16, 17)]
    assert fake_enerkey.hours(4711)[hour(4)] == pytest.approx(kwh(hour(4)), abs=1e-6)
    (gap_alert,) = [a for a in alerts(health) if "no reading" in a]
    assert "5 hour(s) 2024-06-01T11:00:00Z .. 2024-06-01T15:00:00Z" in gap_alert
    assert "samples 2024-06-01T10:06:07Z and 2024-06-01T15:10:00Z" in gap_alert
    assert health.uplink("enerkey").facts["hours_missing"] == {"incomer": 5}


async def test_offset_timestamps_across_both_dst_changes_give_every_utc_hour_once(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    helsinki = ZoneInfo("Europe/Helsinki")
    days = {"2024-03-31": 23, "2024-10-27": 25}
    for day in days:
        start = int(datetime.fromisoformat(f"{day}T00:00:00").replace(tzinfo=helsinki).timestamp())
        await append(
            astore, samples("incomer", start * 1000 - HOUR_MS, start * 1000 + 26 * HOUR_MS)
        )
    uplink = uplink_for(
        fake_enerkey,
        astore,
        Health(),
        {"incomer": 4711},
        timezone="Europe/Helsinki",
        timestamp_format="offset",
    )
    async with running(uplink):
        await fake_enerkey.wait_hours(4711, 2 * 26)
        await asyncio.sleep(0.05)

    stamps = [s for p in fake_enerkey.pushes for s in p.stamps]
    instants = [ts for p in fake_enerkey.pushes for ts, _ in p.values]
    assert len(stamps) == len(set(instants)) == len(fake_enerkey.hours(4711))
    for day, count in days.items():
        local_day = [s for s in stamps if s.startswith(day)]
        assert len(local_day) == count
        assert {s[-6:] for s in local_day} == {"+02:00", "+03:00"}
    # Spring: local 03:00 does not exist, the hour after 02:00+02:00 is 04:00+03:00.
    spring = stamps.index("2024-03-31T02:00:00+02:00")
    assert stamps[spring + 1] == "2024-03-31T04:00:00+03:00"
    # Autumn: local 03:00 happens twice, once per offset.
    autumn = stamps.index("2024-10-27T03:00:00+03:00")
    assert stamps[autumn + 1] == "2024-10-27T03:00:00+02:00"
    steps = {b - a for a, b in itertools.pairwise(instants)}
    assert steps - {HOUR_MS} == {instants[26] - instants[25]}  # only the jump between the days


# -- consumption and restarts -------------------------------------------------------------------


async def test_consumption_is_the_difference_of_hourly_readings_stamped_at_hour_start(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    await append(astore, samples("incomer", T0, hour(5) + MIN))
    meters = {"incomer": {"meter_id": 4711, "mode": "consumption"}}
    uplink = uplink_for(fake_enerkey, astore, Health(), meters)
    async with running(uplink):
        await fake_enerkey.wait_hours(4711, 4, "consumption")

    # Readings at 01:00..05:00 give the hours 01-02 .. 04-05, each 7.2 kWh.
    assert fake_enerkey.hours(4711, "consumption") == pytest.approx(
        {hour(n): 7.2 for n in range(1, 5)}, abs=1e-9
    )
    assert fake_enerkey.pushes[0].operation == "consumption"
    assert fake_enerkey.pushes[0].stamps[0] == "2024-06-01T01:00:00Z"
    assert fake_enerkey.hours(4711) == {}  # nothing went to the cumulative endpoint


@pytest.mark.parametrize("mode", ["cumulative", "consumption"])
async def test_a_restart_after_a_completed_push_never_pushes_that_hour_again(
    fake_enerkey: FakeEnerKey, astore: AsyncStore, mode: str
) -> None:
    meters = {"incomer": {"meter_id": 4711, "mode": mode}}
    await append(astore, samples("incomer", T0, hour(3) + MIN))
    first = uplink_for(fake_enerkey, astore, Health(), meters)
    async with running(first):
        await fake_enerkey.wait_hours(4711, 3 if mode == "cumulative" else 2, mode)
        await asyncio.sleep(0.05)  # the commit after the answer
    pushed_before = len(fake_enerkey.pushes)

    # A new process on the same store: nothing is re-sent; new hours continue seamlessly.
    second = uplink_for(fake_enerkey, astore, Health(), meters)
    async with running(second):
        await asyncio.sleep(0.1)
        assert len(fake_enerkey.pushes) == pushed_before
        await append(astore, samples("incomer", hour(3) + MIN, hour(6) + MIN))
        await fake_enerkey.wait_hours(4711, 6 if mode == "cumulative" else 5, mode)

    assert fake_enerkey.duplicates() == []
    if mode == "cumulative":
        assert fake_enerkey.hours(4711) == pytest.approx(expected(range(1, 7)), abs=1e-6)
    else:
        assert fake_enerkey.hours(4711, mode) == pytest.approx(
            {hour(n): 7.2 for n in range(1, 6)}, abs=1e-9
        )
    saved = await astore.state("enerkey", state_key("4711"))
    assert saved is not None
    state = json.loads(saved)
    assert state["next_hour_ms"] == hour(7)
    delivered = await astore.run(
        hours_table.delivered_hours, "enerkey", "4711", mode, start_ms=hour(0), end_ms=hour(9)
    )
    assert len(delivered) == (6 if mode == "cumulative" else 5)


@pytest.mark.parametrize("mode", ["cumulative", "consumption"])
async def test_a_lost_answer_is_never_sent_again_but_held_for_a_human(
    fake_enerkey: FakeEnerKey, astore: AsyncStore, mode: str
) -> None:
    """EnerKey took a message but the answer never came. EnerKey SUMS values of one hour
    (cumulative readings too), so sending it again would double those hours: the message is
    held as "outcome unknown" in the dead-letter table, alerted, counted, and the stream goes
    on with the hours after it."""
    health = Health()
    await append(astore, samples("incomer", T0, hour(3) + MIN))
    fake_enerkey.process_then_drop(1)
    meters = {"incomer": {"meter_id": 4711, "mode": mode}}
    async with running(uplink_for(fake_enerkey, astore, health, meters)):
        await eventually(lambda: health.uplink("enerkey").facts.get("unknown_outcomes") == 1)
        await append(astore, samples("incomer", hour(3) + MIN, hour(5) + MIN))
        await eventually(lambda: len(fake_enerkey.pushes) == 2)
        await asyncio.sleep(0.05)

    assert len(fake_enerkey.pushes) == 2  # the held message, then the next hours: never again
    assert fake_enerkey.duplicates() == []
    first = {ts for ts, _ in fake_enerkey.pushes[0].values}
    assert not first & {ts for ts, _ in fake_enerkey.pushes[1].values}
    (letter,) = await astore.run(lambda store: store.dead_letters("enerkey"))
    assert letter.status is None and "outcome unknown" in letter.body
    assert json.loads(letter.payload)["meterId"] == 4711
    assert any("outcome unknown" in text and "not sent again" in text for text in alerts(health))
    if mode == "cumulative":
        assert fake_enerkey.hours(4711) == pytest.approx(expected(range(1, 6)), abs=1e-6)
    else:
        assert fake_enerkey.hours(4711, mode) == pytest.approx(
            {hour(n): 7.2 for n in range(1, 5)}, abs=1e-9
        )


async def test_consumption_hours_recorded_as_delivered_are_not_sent_again(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    """The guard behind the cursor: a delivered_hours row stops a consumption hour."""
    health = Health()
    await append(astore, samples("incomer", T0, hour(4) + MIN))
    await astore.register_stream("enerkey", "4711", "incomer")
    await astore.run(
        hours_table.record_delivery,
        "enerkey",
        "4711",
        0,
        kind="consumption",
        hours=[(hour(3), 7.2)],
        now_ms=hour(5),
    )
    meters = {"incomer": {"meter_id": 4711, "mode": "consumption"}}
    async with running(uplink_for(fake_enerkey, astore, health, meters)):
        await fake_enerkey.wait_hours(4711, 2, "consumption")
        await eventually(lambda: any("already delivered" in a for a in alerts(health)))

    # Hours 01-02 and 03-04 are sent; 02-03 (ending 03:00) was recorded and is not.
    assert sorted(fake_enerkey.hours(4711, "consumption")) == [hour(1), hour(3)]


# -- outages, keys and the rate limit -----------------------------------------------------------


async def test_a_24_hour_service_outage_is_caught_up_in_few_messages(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    health = Health()
    await append(astore, samples("incomer", T0, hour(2) + MIN))
    async with running(uplink_for(fake_enerkey, astore, health, {"incomer": 4711})):
        await fake_enerkey.wait_hours(4711, 2)
        fake_enerkey.fail_next(10_000, 503)
        for day_hour in range(2, 26):  # a day of samples arrives while EnerKey is down
            await append(astore, samples("incomer", hour(day_hour) + MIN, hour(day_hour + 1) + MIN))
        await eventually(lambda: fake_enerkey.statuses[503] >= 3)
        pushes_before = len(fake_enerkey.pushes)
        fake_enerkey.heal()
        await fake_enerkey.wait_hours(4711, 26)

    assert len(fake_enerkey.pushes) - pushes_before <= 3
    assert fake_enerkey.hours(4711) == pytest.approx(expected(range(1, 27)), abs=1e-6)
    assert fake_enerkey.duplicates() == []
    assert health.uplink("enerkey").retries >= 3


async def test_key_a_revoked_mid_run_continues_on_key_b_with_an_alert(
    fake_enerkey: FakeEnerKey, astore: AsyncStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    health = Health()
    await append(astore, samples("incomer", T0, hour(2) + MIN))
    async with running(uplink_for(fake_enerkey, astore, health, {"incomer": 4711})):
        await fake_enerkey.wait_hours(4711, 2)
        fake_enerkey.revoke("A")
        await append(astore, samples("incomer", hour(2) + MIN, hour(4) + MIN))
        await fake_enerkey.wait_hours(4711, 4)

    assert fake_enerkey.hours(4711) == pytest.approx(expected(range(1, 5)), abs=1e-6)
    assert fake_enerkey.history[-2:] == [(None, 401), ("B", 200)]  # one refusal, then B
    assert [p.key for p in fake_enerkey.pushes] == ["A", "B"]
    (alert,) = [a for a in alerts(health) if "refused" in a]
    assert "API key A was refused (HTTP 401" in alert and "switched to key B" in alert
    facts = health.uplink("enerkey").facts
    assert facts["key"] == "B" and facts["keys_refused"] == ["A"]
    assert not uplink_paused(health)
    for secret in (KEY_A, KEY_B):
        assert secret not in caplog.text
        assert all(secret not in a for a in alerts(health))
        assert secret not in json.dumps(facts)


def uplink_paused(health: Health) -> bool:
    return health.uplink("enerkey").paused_reason is not None


async def test_both_keys_refused_pause_with_an_alert_and_keep_the_data(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    health = Health()
    fake_enerkey.revoke("A")
    fake_enerkey.revoke("B")
    await append(astore, samples("incomer", T0, hour(3) + MIN))
    uplink = uplink_for(fake_enerkey, astore, health, {"incomer": 4711, "pv": 4712})
    await append(astore, samples("pv", T0, hour(3) + MIN))
    async with running(uplink):
        await eventually(lambda: uplink.paused)
        await eventually(lambda: fake_enerkey.statuses[401] >= 6)  # it keeps probing
        assert fake_enerkey.pushes == []
        (paused,) = [a for a in alerts(health) if "paused" in a]
        assert "API key(s) A and B refused" in paused and "data kept" in paused
        assert uplink_paused(health)
        fake_enerkey.restore("B")
        await fake_enerkey.wait_hours(4711, 3)
        await fake_enerkey.wait_hours(4712, 3)
        await eventually(lambda: not uplink.paused)

    assert not uplink_paused(health)
    assert fake_enerkey.duplicates() == []
    assert {p.key for p in fake_enerkey.pushes} == {"B"}


async def test_429_stops_every_meter_until_retry_after_and_loses_nothing(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    health = Health()
    await append(astore, samples("incomer", T0, hour(2) + MIN))
    await append(astore, samples("pv", T0, hour(2) + MIN))
    fake_enerkey.fail_next(1, 429, retry_after=0.3)
    started = time.monotonic()
    async with running(uplink_for(fake_enerkey, astore, health, {"incomer": 4711, "pv": 4712})):
        await fake_enerkey.wait_hours(4711, 2)
        await fake_enerkey.wait_hours(4712, 2)
        finished = time.monotonic()

    assert finished - started >= 0.3  # neither meter called before Retry-After passed
    assert fake_enerkey.statuses[429] == 1
    assert fake_enerkey.duplicates() == []
    assert health.uplink("enerkey").facts["calls_left"] == fake_enerkey.remaining("A")


async def test_the_services_rate_limit_is_obeyed_when_it_is_lower_than_configured(
    astore: AsyncStore,
) -> None:
    """EnerKey counts every client of the key; when its window is used up, the uplink waits
    for Retry-After and sends the rest, never giving up on data."""
    async with FakeEnerKey({"A": KEY_A}, {4711, 4712, 4713}, limit=3, window_secs=1.0) as fake:
        for meter in ("a", "b", "c"):
            await append(astore, samples(meter, T0, hour(1) + MIN))
        meters = {"a": 4711, "b": 4712, "c": 4713}
        config = make_config(fake, meters, api_keys=[KEY_A])
        uplink = EnerKeyUplink(config, store=astore, health=Health())
        async with running(uplink):
            await asyncio.sleep(0.05)
            await append(astore, samples("a", hour(1) + MIN, hour(2) + MIN))
            await fake.wait_hours(4711, 2, timeout=5)
            await fake.wait_hours(4712, 1)
            await fake.wait_hours(4713, 1)
        assert fake.statuses[429] >= 1
        assert fake.duplicates() == []


# -- refused messages ---------------------------------------------------------------------------


async def test_an_unknown_meter_or_path_pauses_that_meter_with_an_alert_and_keeps_data(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    health = Health()
    await append(astore, samples("incomer", T0, hour(2) + MIN))
    await append(astore, samples("pv", T0, hour(2) + MIN))
    uplink = uplink_for(fake_enerkey, astore, health, {"incomer": 4711, "pv": 9999})
    async with running(uplink):
        await fake_enerkey.wait_hours(4711, 2)
        await eventually(lambda: fake_enerkey.statuses[404] >= 3)

    (alert,) = [a for a in alerts(health) if "9999" in a]
    assert "check the path and meter id" in alert and "data kept" in alert
    assert await astore.dead_letters("enerkey") == []
    assert await astore.cursor("enerkey", "9999") == 0


async def test_a_message_refused_for_good_is_parked_and_later_hours_still_go(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    health = Health()
    await append(astore, samples("incomer", T0, hour(2) + MIN))
    fake_enerkey.fail_next(3, 400)
    async with running(uplink_for(fake_enerkey, astore, health, {"incomer": 4711})):
        await eventually(lambda: health.uplink("enerkey").parked == 1)
        await append(astore, samples("incomer", hour(2) + MIN, hour(3) + MIN))
        await fake_enerkey.wait_hours(4711, 1)

    assert list(fake_enerkey.hours(4711)) == [hour(3)]
    (letter,) = await astore.dead_letters("enerkey")
    assert letter.status == 400 and letter.attempts == 3
    body = json.loads(letter.payload)
    assert body["meterId"] == 4711 and len(body["values"]) == 2
    assert KEY_A not in letter.payload and KEY_A not in letter.body
    assert any("parked" in a for a in alerts(health))


# -- large backlogs -----------------------------------------------------------------------------


async def test_messages_never_span_more_than_the_configured_days(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    await append(astore, samples("incomer", T0, hour(72) + MIN, step=10 * MIN))
    uplink = uplink_for(fake_enerkey, astore, Health(), {"incomer": 4711}, max_days_per_message=1)
    async with running(uplink):
        await fake_enerkey.wait_hours(4711, 72)

    assert len(fake_enerkey.pushes) == 3
    for push in fake_enerkey.pushes:
        assert push.values[-1][0] - push.values[0][0] < 24 * HOUR_MS
    assert fake_enerkey.duplicates() == []


async def test_more_than_a_year_of_backlog_goes_in_two_messages_the_fake_accepts(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    days = 400
    await append(astore, samples("incomer", T0, hour(24 * days) + MIN, step=30 * MIN))
    uplink = uplink_for(
        fake_enerkey, astore, Health(), {"incomer": 4711}, max_interpolation_gap_secs="45m"
    )
    async with running(uplink):
        await fake_enerkey.wait_hours(4711, 24 * days, timeout=20)

    assert len(fake_enerkey.pushes) == 2
    assert len(fake_enerkey.pushes[0].values) == 365 * 24
    assert fake_enerkey.rejected == []
    assert fake_enerkey.hours(4711)[hour(24 * days)] == pytest.approx(kwh(hour(24 * days)))


async def test_the_flush_command_cuts_a_long_retry_backoff_short(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    from gateway.config.schema import MqttCommandsConfig
    from gateway.ops.commands import CommandHandler

    await append(astore, samples("incomer", hour(0), hour(3)))
    fake_enerkey.fail_next(1, 503)
    health = Health()
    uplink = uplink_for(
        fake_enerkey, astore, health, {"incomer": 4711}, retry_initial_secs=600, retry_max_secs=600
    )
    handler = CommandHandler(
        MqttCommandsConfig(flush=True), health=health, uplinks={"enerkey": uplink}
    )
    async with running(uplink):
        await fake_enerkey.wait_requests(1)
        await asyncio.sleep(0.2)
        assert fake_enerkey.hours(4711) == {}  # waiting out a backoff of up to 10 min
        outcome = await handler.handle("uplinks/enerkey/flush", b"")
        assert outcome["ok"] is True, outcome
        await fake_enerkey.wait_hours(4711, 2, timeout=2)


async def test_the_daily_budget_survives_a_restart(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    """40 000 calls per 24 h per key: a gateway restarted (a crash loop, a power cut) must not
    get a fresh budget each start (issue 14 #14). Kept in the store, restored at start."""
    await append(astore, samples("incomer", T0, hour(2) + MIN))
    await append(astore, samples("pv", T0, hour(2) + MIN, offset=23_000))
    limits = {"rate_limit_per_day": 20, "rate_limit_burst": 2}
    meters = {"incomer": 4711, "pv": 4712}
    async with running(uplink_for(fake_enerkey, astore, Health(), meters, **limits)):
        await eventually(lambda: len(fake_enerkey.pushes) == 2)
    later = uplink_for(fake_enerkey, astore, Health(), meters, **limits)
    async with running(later):
        await eventually(lambda: later.budget.calls_in_window() == 2)
        assert later.budget.available() < 1.0  # the burst was spent before the restart


async def test_a_web_page_answered_200_is_not_a_delivery(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    """A captive portal's or proxy's HTML page with 200 never reached EnerKey: retried and
    counted, the cursor stays (issue 16 #8)."""
    health = Health()
    await append(astore, samples("incomer", T0, hour(3) + MIN))
    fake_enerkey.answer_with(200, b"<!DOCTYPE html><html>Welcome to the hotel wifi</html>")
    async with running(uplink_for(fake_enerkey, astore, health, {"incomer": 4711})):
        await fake_enerkey.wait_hours(4711, 3)
    assert fake_enerkey.hours(4711) == pytest.approx(expected(range(1, 4)), abs=1e-6)
    assert health.uplink("enerkey").facts["unexpected_answers"] == 1
    assert fake_enerkey.duplicates() == []


async def test_a_2xx_that_is_not_json_is_held_not_resent(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    """Not a page, not JSON: it may be EnerKey's (the document only says "JSON format"), so
    the message may have been taken: resending could double its hours. Held for a human."""
    health = Health()
    await append(astore, samples("incomer", T0, hour(3) + MIN))
    fake_enerkey.answer_with(200, b"OK", content_type="text/plain")
    async with running(uplink_for(fake_enerkey, astore, health, {"incomer": 4711})):
        await eventually(lambda: health.uplink("enerkey").facts.get("unknown_outcomes") == 1)
    assert fake_enerkey.pushes == []
    assert health.uplink("enerkey").facts["unexpected_answers"] == 1
    (letter,) = await astore.run(lambda store: store.dead_letters("enerkey"))
    assert "not JSON" in letter.body


async def test_an_append_wakes_only_its_meters_stream_and_idle_streams_query_nothing(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    """Issue 19 #1: caught up, three meters' streams wait; ten appends of `incomer` alone make
    no store read for the other two (today each append woke every stream to read)."""
    meters = {"incomer": 4711, "pv": 4712, "heat": 4713}
    for meter in meters:
        await append(astore, samples(meter, T0, hour(1) + MIN))
    uplink = uplink_for(fake_enerkey, astore, Health(), meters)
    async with running(uplink):
        for meter_id in meters.values():
            await fake_enerkey.wait_hours(meter_id, 1)
        await asyncio.sleep(0.2)
        reads: list[str] = []
        original = astore.store.read

        def counted(meter: str, *args: Any, **kwargs: Any) -> Any:
            reads.append(meter)
            return original(meter, *args, **kwargs)

        astore.store.read = counted  # type: ignore[method-assign]
        for minute in range(1, 11):
            await append(
                astore, samples("incomer", hour(1) + minute * MIN, hour(1) + (minute + 1) * MIN)
            )
        await eventually(lambda: "incomer" in reads, what="incomer's stream read")
        await asyncio.sleep(0.2)
    assert set(reads) == {"incomer"}, reads
