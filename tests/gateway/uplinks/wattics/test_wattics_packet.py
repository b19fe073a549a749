"""Wattics packets and site-local timestamps, as pure functions."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.channels import CHANNEL_UNITS
from core.sample import Sample
from gateway.timefmt import local_iso8601_ms, parse_iso8601_ms, utc_datetime, utc_iso8601_ms
from gateway.uplinks.wattics.packets import (
    build_packet,
    encode_packet,
    encode_sample,
    last_timestamp_ms,
)
from tests.fakes.wattics import ELECTRICITY_KEYS, validate_packet

WATTICS_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}", re.ASCII)


def ms(text: str) -> int:
    return Sample.ms_from(datetime.fromisoformat(text))


# -- time ---------------------------------------------------------------------------------------


def test_the_spec_example_renders_exactly() -> None:
    ts = ms("2016-02-10T10:45:31.070+00:00")
    assert local_iso8601_ms(ts, "Australia/Sydney") == "2016-02-10T21:45:31.070+11:00"


@pytest.mark.parametrize(
    ("utc", "zone", "local"),
    [
        # Spring forward in Dublin: 01:00 GMT becomes 02:00 IST, no 01:xx local time exists.
        ("2024-03-31T00:59:59.999Z", "Europe/Dublin", "2024-03-31T00:59:59.999+00:00"),
        ("2024-03-31T01:00:00.000Z", "Europe/Dublin", "2024-03-31T02:00:00.000+01:00"),
        # Autumn back in Dublin: local 01:30 happens twice, told apart by the offset.
        ("2024-10-27T00:30:00.000Z", "Europe/Dublin", "2024-10-27T01:30:00.000+01:00"),
        ("2024-10-27T01:30:00.000Z", "Europe/Dublin", "2024-10-27T01:30:00.000+00:00"),
        # Half-hour zones, with and without DST, both signs.
        ("2024-01-01T00:00:00.070Z", "Asia/Kolkata", "2024-01-01T05:30:00.070+05:30"),
        ("2016-02-10T11:15:31.070Z", "Australia/Adelaide", "2016-02-10T21:45:31.070+10:30"),
        ("2016-07-10T12:15:31.070Z", "Australia/Adelaide", "2016-07-10T21:45:31.070+09:30"),
        ("2024-01-15T12:00:00.000Z", "America/St_Johns", "2024-01-15T08:30:00.000-03:30"),
        ("2024-07-01T00:00:00.001Z", "UTC", "2024-07-01T00:00:00.001+00:00"),
        # Adelaide's own DST start (first Sunday of October, 02:00 -> 03:00 local).
        ("2024-10-05T16:29:59.999Z", "Australia/Adelaide", "2024-10-06T01:59:59.999+09:30"),
        ("2024-10-05T16:30:00.000Z", "Australia/Adelaide", "2024-10-06T03:00:00.000+10:30"),
    ],
)
def test_local_rendering(utc: str, zone: str, local: str) -> None:
    ts = ms(utc.replace("Z", "+00:00"))
    assert local_iso8601_ms(ts, zone) == local
    assert parse_iso8601_ms(local) == ts


def test_repeated_autumn_hour_stays_strictly_increasing() -> None:
    start = ms("2024-10-27T00:00:00+00:00")  # 01:00 IST, one hour before the change
    stamps = [local_iso8601_ms(start + minute * 60_000, "Europe/Dublin") for minute in range(150)]
    wall = [s[:23] for s in stamps]
    assert len(set(wall)) < len(wall), "the wall-clock hour must repeat"
    instants = [parse_iso8601_ms(s) for s in stamps]
    assert instants == sorted(set(instants))


def test_utc_rendering() -> None:
    assert utc_iso8601_ms(ms("2024-01-31T23:00:00.5+00:00")) == "2024-01-31T23:00:00.500Z"


def test_naive_timestamps_are_refused_when_parsed() -> None:
    with pytest.raises(ValueError):
        parse_iso8601_ms("2024-01-31T23:00:00.000")


ZONES = st.sampled_from(
    ["Europe/Dublin", "Asia/Kolkata", "Australia/Adelaide", "America/St_Johns",
     "Pacific/Chatham", "Asia/Kathmandu", "UTC", "America/Los_Angeles", "Australia/Lord_Howe",
     "Africa/Monrovia", "Europe/Amsterdam"]
)  # fmt: skip


@given(ts=st.integers(min_value=-2_000_000_000_000, max_value=4_102_444_800_000), zone=ZONES)
def test_rendering_round_trips_in_the_wattics_format(ts: int, zone: str) -> None:
    text = local_iso8601_ms(ts, zone)
    assert WATTICS_TS.fullmatch(text)
    assert parse_iso8601_ms(text) == ts


@given(ts=st.integers(min_value=-2_000_000_000_000, max_value=4_102_444_800_000), zone=ZONES)
def test_rendering_matches_the_standard_library(ts: int, zone: str) -> None:
    local = utc_datetime(ts).astimezone(ZoneInfo(zone))
    offset = local.utcoffset()
    assert offset is not None
    if offset.seconds % 60:  # pre-1972 local mean time: rounded, tested by the round trip
        return
    expected = local.isoformat(timespec="milliseconds")
    assert local_iso8601_ms(ts, zone) == expected


def test_offsets_with_seconds_are_rounded_consistently() -> None:
    ts = ms("1950-06-01T12:00:00+00:00")  # Monrovia was UTC-0:44:30 then
    assert local_iso8601_ms(ts, "Africa/Monrovia") == "1950-06-01T11:16:00.000-00:44"
    assert parse_iso8601_ms(local_iso8601_ms(ts, "Africa/Monrovia")) == ts


# -- packets ------------------------------------------------------------------------------------

FULL = {
    "voltage_l1": 230.1,
    "voltage_l2": 231.2,
    "voltage_l3": 229.3,
    "current_l1": 1.5,
    "current_l2": 2.5,
    "current_l3": 3.5,
    "power_active_l1": 300.0,
    "power_active_l2": 400.0,
    "power_active_l3": 500.0,
    "power_reactive_l1": -10.0,
    "power_reactive_l2": 20.0,
    "power_reactive_l3": 30.0,
    "power_apparent_l1": 310.0,
    "power_apparent_l2": 410.0,
    "power_apparent_l3": 510.0,
    "energy_active_import": 12_345_678.0,
    "voltage_l1_l2": 400.1,
    "voltage_l2_l3": 400.2,
    "voltage_l3_l1": 400.3,
    "frequency": 50.01,
    "power_factor": 0.98,
    "energy_active_export": 5.0,
}


def test_full_electricity_packet() -> None:
    sample = Sample("incomer", ms("2024-06-01T12:00:00.250+00:00"), FULL)
    packet = build_packet(sample, "abc123", "Europe/Dublin")
    assert packet == {
        "id": "abc123",
        "tsISO8601": "2024-06-01T13:00:00.250+01:00",
        "v_1": 230.1, "v_2": 231.2, "v_3": 229.3,
        "c_1": 1.5, "c_2": 2.5, "c_3": 3.5,
        "aP_1": 300.0, "aP_2": 400.0, "aP_3": 500.0,
        "rP_1": -10.0, "rP_2": 20.0, "rP_3": 30.0,
        "apP_1": 310.0, "apP_2": 410.0, "apP_3": 510.0,
        "pC_1": 12_345_678.0,
        "v_12": 400.1, "v_23": 400.2, "v_13": 400.3,
    }  # fmt: skip
    assert set(packet) - {"id", "tsISO8601"} <= ELECTRICITY_KEYS


def test_every_mapped_channel_exists_in_the_vocabulary() -> None:
    from gateway.uplinks.wattics.packets import ELECTRICITY_FIELDS, PER_PHASE_ENERGY

    channels = {*ELECTRICITY_FIELDS.values(), *PER_PHASE_ENERGY.values()}
    assert channels <= set(CHANNEL_UNITS)
    assert {*ELECTRICITY_FIELDS, *PER_PHASE_ENERGY} <= ELECTRICITY_KEYS


def test_energy_is_sent_in_wh_to_pc_1_only() -> None:
    sample = Sample("m", 0, {"energy_active_import": 1500.0, "energy_active_import_l1": 500.0})
    packet = build_packet(sample, "s", "UTC")
    assert packet is not None
    assert packet["pC_1"] == 1500.0
    assert "pC_2" not in packet and "pC_3" not in packet


def test_per_phase_energy_on_request() -> None:
    values = {
        "energy_active_import": 1500.0,
        "energy_active_import_l1": 400.0,
        "energy_active_import_l2": 500.0,
        "energy_active_import_l3": 600.0,
    }
    packet = build_packet(Sample("m", 0, values), "s", "UTC", energy_per_phase=True)
    assert packet is not None
    assert (packet["pC_1"], packet["pC_2"], packet["pC_3"]) == (400.0, 500.0, 600.0)


def test_missing_null_and_non_finite_values_are_left_out() -> None:
    values = {"voltage_l1": 230.0, "voltage_l2": float("nan"), "current_l1": float("inf")}
    packet = build_packet(Sample("m", 0, values), "s", "UTC")
    assert packet == {"id": "s", "tsISO8601": "1970-01-01T00:00:00.000+00:00", "v_1": 230.0}


def test_sample_without_wattics_channels_gives_no_packet() -> None:
    assert build_packet(Sample("m", 0, {"frequency": 50.0}), "s", "UTC") is None


CHANNEL_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.none(),
    st.booleans(),
)


@given(
    values=st.dictionaries(st.sampled_from(sorted(CHANNEL_UNITS)), CHANNEL_VALUES, max_size=25),
    stream=st.text(max_size=12),
    ts=st.integers(min_value=0, max_value=4_102_444_800_000),
    zone=ZONES,
    per_phase=st.booleans(),
)
def test_fast_encoder_gives_exactly_the_reference_bytes(
    values: dict[str, Any], stream: str, ts: int, zone: str, per_phase: bool
) -> None:
    sample = Sample("m", ts, values)
    packet = build_packet(sample, stream, zone, energy_per_phase=per_phase)
    fast = encode_sample(sample, stream, zone, energy_per_phase=per_phase)
    assert fast == (None if packet is None else encode_packet(packet))


def test_encoded_packet_is_one_compact_line_the_strict_fake_accepts() -> None:
    sample = Sample("m", ms("2024-10-27T01:30:00+00:00"), FULL)
    packet = build_packet(sample, 'odd "id"\n', "Asia/Kolkata")
    assert packet is not None
    body = encode_packet(packet)
    assert b"\n" not in body and b"\r" not in body and b": " not in body and b", " not in body
    assert json.loads(body) == packet
    accepted, instant = validate_packet(body)
    assert accepted == packet
    assert instant == sample.ts_ms


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"id": "s", "tsISO8601": "2024-01-01T05:30:00.070+05:30"}, "2024-01-01T00:00:00.070"),
        ({"data": [{"tsIso8601": "2024-01-01T00:00:00.000+00:00"},
                   {"tsISO8601": "2024-01-01T01:00:00.000+00:00"}]}, "2024-01-01T01:00:00.000"),
        ({"tsISO8601": "yesterday"}, None),
        ({"ts": 12}, None),
        ([], None),
        ("garbage", None),
    ],
)  # fmt: skip
def test_last_processed_timestamp_is_parsed_defensively(
    answer: object, expected: str | None
) -> None:
    want = None if expected is None else ms(expected + "+00:00")
    assert last_timestamp_ms(answer) == want


def test_utc_datetime_is_exact() -> None:
    assert utc_datetime(1_700_000_000_123) == datetime(2023, 11, 14, 22, 13, 20, 123000, UTC)
