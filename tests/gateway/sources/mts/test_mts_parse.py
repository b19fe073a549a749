"""Tolerant reading of MTS answers (the document's own variants), ingest, and the schedule."""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sources.mts import parse as mts_parse
from gateway.sources.mts.config import MtsMeterConfig, MtsScheduleConfig
from gateway.sources.mts.ingest import ingest
from gateway.sources.mts.parse import details, number, parse_search, parse_status
from gateway.sources.mts.schedule import last_slot_ms, next_slot_ms, survey_window

State = mts_parse.TestState  # not imported by name: pytest would try to collect it


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


#: The document's "successfully completed test" sample, made into JSON as it stands.
DOCUMENT_SAMPLE: dict[str, Any] = {
    "testId": 1234,
    "requestReference": "0001",
    "meterType": "ELSTERA1700",
    "surveyDays": 1,
    "surveyDate": "2019-01-01",
    "resultSummary": "SUCCESS",
    "testStartTime": "2019-01-02T04:00:00",
    "connectionEndTime": "2019-01-02T04:01:28",
    "serialNumber": "12345678",
    "meterTime": "2019-01-02T03T04:02:15 +10s",
    "statusEvents": ["Lid/terminal cover tamper"],
    "meterProperties": [{"name": "CT\\VT ratios", "value": "CT: 600:5 VT: 1:1"}],
    "registers": [
        {
            "category": "Energy",
            "registerValues": [
                {"name": "Active Energy Import", "value": "879", "units": "kWh"},
                {"name": "Active Energy Export", "value": "2,380,181", "units": "kWh"},
            ],
        },
        {
            "category": "Instantaneous",
            "registerValues": [
                {"name": "Total Active Power", "value": "-1,990.000", "units": "kW"}
            ],
        },
        {
            "category": "Miscellaneous",
            "registerValues": [{"name": "Firmware", "value": "B40", "units": ""}],
        },
    ],
    "surveyData": [
        {
            "name": "kWh Import",
            "units": "kWh",
            "readings": [
                {"timestamp": "2019-01-01T00:00:00Z", "value": "640"},
                {"timestamp": "2019-01-01T00:30:00Z", "value": "645"},
                {"timestamp": "2019-01-01T01:00:00Z", "value": "oops"},
                {"timestamp": "2019-01-01T23:30:00Z", "value": "700"},
            ],
        },
        {"name": "kvarh Q1", "units": "kvarh", "readings": []},
    ],
}


def test_the_documents_sample_is_read_with_its_quirks() -> None:
    status = parse_status(DOCUMENT_SAMPLE)
    assert status is not None
    assert status.state is State.SUCCESS
    assert status.test_id == 1234
    assert status.serial == "12345678"
    assert status.clock_offset_s == 10
    assert status.meter_time_ms == ms("2019-01-02T04:02:15")
    assert status.read_ms == ms("2019-01-02T04:02:05")  # the meter was 10 s ahead
    values = {r.name: r.value for r in status.registers}
    assert values["Active Energy Export"] == 2_380_181.0
    assert values["Total Active Power"] == -1990.0
    assert values["Firmware"] is None
    kwh, _ = status.survey
    assert kwh.readings == [
        (ms("2019-01-01T00:00:00"), 640.0),
        (ms("2019-01-01T00:30:00"), 645.0),
        (ms("2019-01-01T23:30:00"), 700.0),
    ]
    assert kwh.bad == 1
    assert status.problems == ["1 unreadable reading(s) in survey channel 'kWh Import'"]

    result = ingest(
        status, "hh1", "hh1-registers", MtsMeterConfig.model_validate(METER), period_secs=1800
    )
    assert [(s.ts_ms, dict(s.values)) for s in result.survey] == [
        (ms("2019-01-01T00:00:00"), {"energy_active_import": 640_000.0}),
        (ms("2019-01-01T00:30:00"), {"energy_active_import": 645_000.0}),
        (ms("2019-01-01T23:30:00"), {"energy_active_import": 700_000.0}),
    ]
    assert result.registers is not None
    assert result.registers.meter == "hh1-registers"
    assert result.registers.ts_ms == ms("2019-01-02T04:02:05")
    assert dict(result.registers.values) == {
        "energy_active_import": 879_000.0,
        "energy_active_export": 2_380_181_000.0,
        "power_active": -1_990_000.0,
    }


METER = {"meter_type": "ELSTERA1700", "remote_address": "07777000000"}


def test_the_tables_variant_and_flat_registers_are_read_too() -> None:
    body = {
        "testid": "77",
        "result": "PARTIAL SUCCESS",
        "connectionEndTime": "2024-05-01T02:00:00Z",
        "serialNumber": "ERROR: Serial number mismatch (meter reports 1)",
        "meterTime": "ERROR: no answer",
        "registerValues": [{"name": "Active Energy Import", "value": 12.5, "units": "MWh"}],
        "surveyData": [
            {
                "name": "kWh Import",
                "units": "kWh",
                "readings": [{"timestamp": "2024-05-01T00:00:00Z", "value": 1.5}],
            }
        ],
    }
    status = parse_status(body)
    assert status is not None
    assert status.state is State.PARTIAL
    assert status.test_id == 77
    assert status.serial_error == "Serial number mismatch (meter reports 1)"
    assert status.meter_time_error == "no answer"
    assert status.read_ms == ms("2024-05-01T02:00:00")
    meter = MtsMeterConfig.model_validate(
        {**METER, "survey": {"kWh Import": {"channel": "power_active", "kind": "interval"}}}
    )
    result = ingest(status, "hh1", "hh1-registers", meter, period_secs=1800)
    assert dict(result.survey[0].values) == {"power_active": 3000.0}  # 1.5 kWh in 30 min = 3 kW
    assert result.registers is not None
    assert dict(result.registers.values) == {"energy_active_import": 12_500_000.0}


def test_a_unit_that_does_not_fit_its_channel_is_left_out_and_reported() -> None:
    body = {
        "result": "SUCCESS",
        "connectionEndTime": "2024-05-01T02:00:00Z",
        "registers": [{"name": "Active Energy Import", "value": 1, "units": "kvarh"}],
    }
    status = parse_status(body)
    assert status is not None
    result = ingest(status, "hh1", "r", MtsMeterConfig.model_validate(METER), period_secs=1800)
    assert result.registers is None
    assert result.problems == [
        "register 'Active Energy Import': unit 'kvarh' does not fit energy_active_import (Wh)"
    ]


@pytest.mark.parametrize(
    ("body", "state", "error"),
    [
        ({"testId": 1, "resultSummary": "PENDING"}, State.PENDING, None),
        ({"testId": 1, "result": "ERROR: No dial tone"}, State.ERROR, "No dial tone"),
        ({"testId": 1, "result": "ERROR"}, State.ERROR, "no details"),
        ({"testId": 1, "result": "RUNNING"}, State.UNKNOWN, None),
    ],
)
def test_result_strings(body: dict[str, Any], state: State, error: str | None) -> None:
    status = parse_status(body)
    assert status is not None
    assert (status.state, status.error) == (state, error)


@pytest.mark.parametrize("body", [None, [], "SUCCESS", {"testId": 1}, {"result": None}])
def test_an_answer_without_a_result_is_garbage(body: object) -> None:
    assert parse_status(body) is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2,380,181", 2_380_181.0),
        ("-1,990.000", -1990.0),
        ("879", 879.0),
        (" 0.5 ", 0.5),
        (12, 12.0),
        ("1e3", 1000.0),
        ("1,5", None),  # a decimal comma or a broken group: not guessed
        ("12,34,567", None),
        ("B40", None),
        ("NaN", None),
        (True, None),
        (float("inf"), None),
    ],
)
def test_numbers(text: object, value: float | None) -> None:
    assert number(text) == value


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12))
def test_grouped_numbers_round_trip(value: float) -> None:
    assert number(f"{value:,.3f}") == pytest.approx(round(value, 3))


def test_details_as_string_or_list() -> None:
    assert details({"details": "Remote address is not in a recognised format"}) == (
        "Remote address is not in a recognised format"
    )
    assert details({"details": ["a", "b"], "retryAfter": 3}) == "a; b"
    assert details("<html>") == ""


def test_search_pages() -> None:
    page = parse_search(
        {
            "totalResultCount": 3,
            "resultCount": 1,
            "offset": 2,
            "results": [
                {"testId": 1002, "requestReference": "r", "resultSummary": "PENDING", "x": 1},
                {"nothing": True},
            ],
        }
    )
    assert page is not None
    assert (page.total, page.count, page.offset) == (3, 1, 2)
    assert [(s.test_id, s.state) for s in page.results] == [(1002, State.PENDING)]
    assert parse_search({"results": []}) is None


# -- schedule ----------------------------------------------------------------------------------


def test_daily_slots_follow_site_time_across_dst() -> None:
    schedule = MtsScheduleConfig(daily_at=time(2, 0))
    zone = "Europe/London"
    # 2026-03-29: clocks go 01:00 GMT -> 02:00 BST; 02:00 BST is 01:00 UTC.
    assert last_slot_ms(ms("2026-03-29T12:00:00"), schedule, zone) == ms("2026-03-29T01:00:00")
    assert next_slot_ms(ms("2026-03-29T00:30:00"), schedule, zone) == ms("2026-03-29T01:00:00")
    assert last_slot_ms(ms("2026-03-29T00:30:00"), schedule, zone) == ms("2026-03-28T02:00:00")
    assert next_slot_ms(ms("2026-03-29T01:00:00"), schedule, zone) == ms("2026-03-30T01:00:00")


def test_every_slots_are_aligned() -> None:
    schedule = MtsScheduleConfig(every=21600)
    assert last_slot_ms(ms("2026-01-01T07:00:00"), schedule, "UTC") == ms("2026-01-01T06:00:00")
    assert next_slot_ms(ms("2026-01-01T06:00:00"), schedule, "UTC") == ms("2026-01-01T12:00:00")


def test_survey_window_catches_up_after_an_outage() -> None:
    now = ms("2026-01-10T02:00:00")
    assert survey_window(now, None, 1, 31) == (None, 1)
    assert survey_window(now, ms("2026-01-09T23:30:00"), 1, 31) == (None, 1)
    assert survey_window(now, ms("2026-01-05T23:30:00"), 1, 31) == ("2026-01-05", 6)
    assert survey_window(now, ms("2025-06-01T00:00:00"), 1, 31) == ("2025-12-11", 31)
    assert survey_window(now, ms("2025-06-01T00:00:00"), 0, 31) == (None, 0)
