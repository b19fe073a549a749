"""Wattics datapoints: value packets, registered intervals, DST and odd zones, the UTC route,
re-queued dead letters and an outage, against the strict fake with a real store."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.health import Health
from core.sample import Sample
from gateway.cli.main import main as cli_main
from gateway.config.loader import load_config
from gateway.daemon import open_store
from gateway.store.async_store import AsyncStore
from gateway.uplinks.wattics.interval import next_boundary_ms, on_grid
from gateway.uplinks.wattics.uplink import WatticsUplink
from tests.fakes.wattics import FakeWattics
from tests.fixtures.wattics import PASSWORD, USERNAME
from tests.gateway.uplinks.wattics.test_wattics_uplink import append, make_config, running
from tests.helpers.eventually import eventually

MIN = 60_000


def utc_ms(text: str) -> int:
    return round(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def uplink(fake: FakeWattics, store: AsyncStore, tz: str, **settings: Any) -> WatticsUplink:
    meters = settings.pop("meters", {})
    config = make_config(fake, meters, **settings)
    return WatticsUplink(config, store=store, health=Health(), timezone=tz)


def electricity(meter: str, ts_ms: int, n: float) -> Sample:
    return Sample(
        meter,
        ts_ms,
        {
            "power_active_l1": n,
            "energy_active_import": 1000.0 * n,
            "energy_active_export": 10.0 * n,
        },
    )


# -- value packets ------------------------------------------------------------------------------


async def test_one_meter_feeds_an_electricity_and_a_value_datapoint(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    fake_wattics.register("stream-a", "electricity")
    fake_wattics.register("stream-b", "value")
    fake_wattics.register("stream-c", "value")
    samples = [electricity("incomer", utc_ms("2024-06-01T10:00:00") + i * MIN, i) for i in range(5)]
    samples.append(Sample("gas", utc_ms("2024-06-01T10:00:00"), {"gas_volume": 123.25}))
    await append(astore, samples)
    points = [
        {"id": "stream-b", "meter": "incomer", "channel": "energy_active_export", "scale": 0.001},
        {"id": "stream-c", "meter": "gas", "channel": "gas_volume"},
    ]
    up = uplink(
        fake_wattics, astore, "Europe/Dublin", meters={"incomer": "stream-a"}, datapoints=points
    )
    async with running(up):
        await fake_wattics.wait_accepted(11)
    assert [p["pC_1"] for p in fake_wattics.delivered("stream-a")] == [1000.0 * i for i in range(5)]
    assert fake_wattics.delivered("stream-b") == [
        {"id": "stream-b", "tsISO8601": f"2024-06-01T11:0{i}:00.000+01:00", "value": 0.01 * i}
        for i in range(5)
    ]
    assert fake_wattics.delivered("stream-c") == [
        {"id": "stream-c", "tsISO8601": "2024-06-01T11:00:00.000+01:00", "value": 123.25}
    ]
    assert fake_wattics.rejected == [] and fake_wattics.all_discarded() == []


def test_a_value_datapoint_needs_a_known_channel() -> None:
    fake = FakeWattics()
    with pytest.raises(ValueError, match="unknown channel 'gas'"):
        make_config(fake, {}, datapoints=[{"id": "x", "meter": "m", "channel": "gas"}])
    with pytest.raises(ValueError, match="at least one datapoint"):
        make_config(fake, {})


# -- registered interval ------------------------------------------------------------------------


async def test_a_5_minute_datapoint_gets_one_packet_per_boundary_from_a_1_minute_meter(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    """Boundary samples go as they are; a missing boundary sample is replaced by the newest
    one within the tolerance, stamped at the boundary; a longer gap is a hole."""
    fake_wattics.register("stream-a", "value", interval_s=300)
    start = utc_ms("2024-06-01T10:00:00")
    minutes = [m for m in range(0, 41) if m not in (10, 24, 25, 26, 27, 28, 29, 30)]
    samples = [electricity("m", start + m * MIN, m) for m in minutes]
    samples[2] = electricity("m", start + 2 * MIN + 500, 2)  # a late-stamped read, not on a minute
    await append(astore, samples)
    point = {"id": "stream-a", "meter": "m", "channel": "power_active_l1", "interval": "5m"}
    up = uplink(fake_wattics, astore, "UTC", datapoints=[point], tolerance="90s")
    async with running(up):
        # 10:00 ... 10:40 minus the 10:25 and 10:30 holes (no sample within 90 s before them)
        await fake_wattics.wait_accepted(7)
        await eventually(lambda: up.skipped >= len(samples) - 7)
    sent = fake_wattics.delivered("stream-a")
    assert [(p["tsISO8601"][11:16], p["value"]) for p in sent] == [
        ("10:00", 0),
        ("10:05", 5),
        ("10:10", 9),  # no 10:10 sample: the 10:09 one, stamped at the boundary
        ("10:15", 15),
        ("10:20", 20),
        ("10:35", 35),
        ("10:40", 40),
    ]
    assert fake_wattics.off_grid["stream-a"] == 0
    assert fake_wattics.holes("stream-a") == 2  # 10:25 and 10:30 had no sample near enough


async def test_a_pending_boundary_is_sent_after_the_wait_when_nothing_better_comes(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    fake_wattics.register("stream-a", "electricity", interval_s=900)
    await append(astore, [electricity("m", utc_ms("2024-06-01T10:14:30"), 1)])
    point = {"id": "stream-a", "meter": "m", "interval": "15m"}
    up = uplink(fake_wattics, astore, "UTC", datapoints=[point], boundary_wait_secs=0)
    async with running(up):
        await fake_wattics.wait_accepted(1)
    assert fake_wattics.delivered("stream-a")[0]["tsISO8601"] == "2024-06-01T10:15:00.000+00:00"


@pytest.mark.parametrize(
    ("zone", "day"),
    [
        ("Europe/Dublin", "2024-10-27"),  # autumn: 01:00-02:00 local happens twice
        ("Europe/Dublin", "2024-03-31"),  # spring: 01:00-02:00 local does not happen
        ("America/New_York", "2024-11-03"),
        ("Australia/Lord_Howe", "2024-04-07"),  # a 30-minute DST shift
    ],
)
async def test_hourly_datapoint_across_a_dst_change_is_strictly_increasing_without_holes(
    fake_wattics: FakeWattics, astore: AsyncStore, zone: str, day: str
) -> None:
    fake_wattics.register("stream-a", "value", interval_s=3600)
    tz = ZoneInfo(zone)
    start = round(datetime.fromisoformat(f"{day}T00:00:00").replace(tzinfo=tz).timestamp() * 1000)
    samples = [electricity("m", start + i * 15 * MIN, i) for i in range(4 * 26)]
    await append(astore, samples)
    point = {"id": "stream-a", "meter": "m", "channel": "energy_active_import", "interval": "1h"}
    up = uplink(fake_wattics, astore, zone, datapoints=[point])
    expected = [s for s in samples if on_grid(s.ts_ms, 3_600_000, tz)]
    async with running(up):
        await fake_wattics.wait_accepted(len(expected))
        await eventually(lambda: up.skipped >= len(samples) - len(expected))
    sent = fake_wattics.delivered("stream-a")
    assert [p["value"] for p in sent] == [s.values["energy_active_import"] for s in expected]
    instants = [datetime.fromisoformat(p["tsISO8601"]) for p in sent]
    assert all(a < b for a, b in itertools.pairwise(instants))
    assert all(t.minute == 0 for t in instants)  # local wall clock on the hour
    assert fake_wattics.all_discarded() == [] and fake_wattics.off_grid["stream-a"] == 0


@pytest.mark.parametrize(("zone", "utc_minute"), [("Asia/Kolkata", 30), ("Asia/Kathmandu", 15)])
async def test_hourly_boundaries_follow_local_time_in_half_and_quarter_hour_zones(
    fake_wattics: FakeWattics, astore: AsyncStore, zone: str, utc_minute: int
) -> None:
    fake_wattics.register("stream-a", "value", interval_s=3600)
    start = utc_ms("2024-06-01T00:00:00")
    await append(astore, [electricity("m", start + i * 15 * MIN, i) for i in range(16)])
    point = {"id": "stream-a", "meter": "m", "channel": "power_active_l1", "interval": "1h"}
    async with running(uplink(fake_wattics, astore, zone, datapoints=[point])):
        await fake_wattics.wait_accepted(3)
    stamps = [p["tsISO8601"] for p in fake_wattics.delivered("stream-a")]
    assert all(s[14:16] == "00" for s in stamps), stamps
    assert fake_wattics.delivered("stream-a")[0]["value"] == utc_minute // 15


@settings(max_examples=300, deadline=None)
@given(
    ts=st.integers(min_value=1_700_000_000_000, max_value=1_800_000_000_000),
    interval=st.sampled_from([60_000, 300_000, 900_000, 1_800_000, 3_600_000]),
    zone=st.sampled_from(["UTC", "Europe/Dublin", "Asia/Kolkata", "Australia/Lord_Howe"]),
)
def test_next_boundary_is_the_first_local_grid_point_at_or_after(
    ts: int, interval: int, zone: str
) -> None:
    tz = ZoneInfo(zone)
    boundary = next_boundary_ms(ts, interval, tz)
    assert boundary >= ts and on_grid(boundary, interval, tz)
    # no grid point in between (grid points are whole minutes in these zones)
    first_minute = -(-ts // 60_000) * 60_000
    assert not any(on_grid(t, interval, tz) for t in range(first_minute, boundary, 60_000))


# -- the UTC route ------------------------------------------------------------------------------


async def test_the_utc_route_sends_utc_timestamps(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    await append(astore, [electricity("m", utc_ms("2024-06-01T10:00:00"), 1)])
    up = uplink(fake_wattics, astore, "Europe/Dublin", meters={"m": "stream-a"}, timestamps="utc")
    async with running(up):
        await fake_wattics.wait_accepted(1)
    assert fake_wattics.delivered("stream-a")[0]["tsISO8601"] == "2024-06-01T10:00:00.000+00:00"


# -- outage and dead letters --------------------------------------------------------------------


async def test_an_outage_during_a_run_loses_and_repeats_nothing(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    start = utc_ms("2024-06-01T10:00:00")
    meters = {"m1": "stream-a", "m2": "stream-b", "m3": "stream-c"}
    up = uplink(fake_wattics, astore, "UTC", meters=meters)
    async with running(up):
        for batch in range(6):
            if batch == 2:
                fake_wattics.fail_for(0.4)
            if batch == 3:
                fake_wattics.drop_connections(3)
            await append(
                astore,
                [
                    electricity(meter, start + (batch * 10 + i) * MIN, batch * 10 + i)
                    for meter in meters
                    for i in range(10)
                ],
            )
        await fake_wattics.wait_accepted(180, timeout=10)
    for stream in meters.values():
        values = [p["aP_1"] for p in fake_wattics.delivered(stream)]
        assert values == [float(n) for n in range(60)]
    assert fake_wattics.all_discarded() == []
    assert fake_wattics.statuses[503] > 0 and fake_wattics.dropped == 3


async def test_parked_packets_requeued_from_the_command_line_are_delivered(
    fake_wattics: FakeWattics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Letters an older version parked for a datapoint not registered yet (404 parked then;
    now it pauses the stream): once it is registered, `meter-gateway deadletters --requeue`
    has the running uplink send them, in order, and they leave the dead-letter table. Every
    later sample was parked too, so the re-queue keeps Wattics' chronological order."""
    config_path = tmp_path / "site.yaml"
    wattics = {
        "url": fake_wattics.url,
        "username": USERNAME,
        "password": PASSWORD,
        "meters": {"late": {"id": "not-yet"}},
        "retry_initial_secs": 0.01,
        "retry_max_secs": 0.02,
    }
    site = {
        "gateway": {"id": "site", "timezone": "UTC", "data_dir": str(tmp_path)},
        "buses": {"line": {"type": "modbus-tcp", "host": "127.0.0.1"}},  # never opened here
        "meters": [{"id": "late", "bus": "line", "model": "sdm630"}],
        "uplinks": {"wattics": wattics},
    }
    config_path.write_text(json.dumps(site))
    config = load_config(str(config_path))
    store = AsyncStore(open_store(config))
    try:
        start = utc_ms("2024-06-01T10:00:00")
        ids = await append(store, [electricity("late", start + i * MIN, i) for i in range(4)])
        await store.register_stream("wattics", "not-yet", "late")
        for i, rowid in enumerate(ids):
            payload = {"id": "not-yet", "tsISO8601": f"2024-06-01T10:0{i}:00.000+00:00", "aP_1": i}
            await store.park(
                "wattics",
                "not-yet",
                rowid,
                payload=json.dumps(payload, separators=(",", ":")),
                status=404,
                body='{"error": "unknown data stream"}',
                attempts=1,
                now_ms=0,
            )
        assert cli_main(["deadletters", "-c", str(config_path)]) == 0
        assert capsys.readouterr().out.count("status 404") == 4
        fake_wattics.register("not-yet", "electricity")
        up = WatticsUplink(config.uplinks.wattics, store=store, health=Health(), timezone="UTC")
        async with running(up):
            assert cli_main(["deadletters", "-c", str(config_path), "--requeue"]) == 0
            assert "4 item(s) will be sent" in capsys.readouterr().out
            await store.append([electricity("late", start + 10 * MIN, 10)])  # wakes the stream
            await fake_wattics.wait_accepted(5)
        assert [p["aP_1"] for p in fake_wattics.delivered("not-yet")] == [0, 1, 2, 3, 10]
        assert await store.dead_letters("wattics", include_requeued=True) == []
        assert cli_main(["deadletters", "-c", str(config_path)]) == 0
        assert "no parked items" in capsys.readouterr().out
    finally:
        await store.aclose()


# -- flush: "retry now" -------------------------------------------------------------------------


async def test_the_flush_command_cuts_a_long_retry_backoff_short(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    from gateway.config.schema import MqttCommandsConfig
    from gateway.ops.commands import CommandHandler

    fake_wattics.fail_next(1, 503)
    await append(astore, [electricity("m", utc_ms("2024-06-01T10:00:00"), 1)])
    health = Health()
    config = make_config(
        fake_wattics,
        {"m": "stream-a"},
        retry_initial_secs=600,
        retry_max_secs=600,
        resync_on_start=False,  # the one injected 503 is for the packet
    )
    up = WatticsUplink(config, store=astore, health=health, timezone="UTC")
    handler = CommandHandler(MqttCommandsConfig(flush=True), health=health, uplinks={"wattics": up})
    async with running(up):
        await eventually(lambda: fake_wattics.statuses[503] == 1)
        await asyncio.sleep(0.2)
        assert fake_wattics.total_accepted() == 0  # waiting out a backoff of up to 10 min
        outcome = await handler.handle("uplinks/wattics/flush", b"")
        assert outcome["ok"] is True, outcome
        await fake_wattics.wait_accepted(1, timeout=2)
    assert fake_wattics.delivered("stream-a")[0]["aP_1"] == 1
