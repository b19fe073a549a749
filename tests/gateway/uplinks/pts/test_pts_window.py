"""PTS windows in Eastern time, the MeterDate text, the reading choice and the local checks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.sample import Sample, StoredSample
from gateway.timefmt import local_naive_iso8601, parse_local_naive
from gateway.uplinks.pts.rules import LastReading, Remedy, check_reading, remedy_for
from gateway.uplinks.pts.window import (
    Period,
    Reading,
    choose_reading,
    closed_windows,
    eastern,
    kwh,
    last_closed_window,
    next_window,
    reading_of,
    submit_at,
    window_at,
    window_for,
)


def utc_ms(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("period", "open_utc", "end_utc", "close_utc", "shown"),
    [
        # 31-day month, winter (EST, UTC-5): MassCEC's own example "January 27th – February 5th".
        (
            Period(2026, 1),
            (2026, 1, 27, 5),
            (2026, 2, 1, 5),
            (2026, 2, 6, 5),
            "2026-01-27T00:00:00 – 2026-02-05T23:59:59 Eastern",
        ),
        # 28-day month: the window opens on the 24th, not the 27th.
        (
            Period(2026, 2),
            (2026, 2, 24, 5),
            (2026, 3, 1, 5),
            (2026, 3, 6, 5),
            "2026-02-24T00:00:00 – 2026-03-05T23:59:59 Eastern",
        ),
        # Leap February.
        (
            Period(2028, 2),
            (2028, 2, 25, 5),
            (2028, 3, 1, 5),
            (2028, 3, 6, 5),
            "2028-02-25T00:00:00 – 2028-03-05T23:59:59 Eastern",
        ),
        # Summer (EDT, UTC-4).
        (
            Period(2026, 7),
            (2026, 7, 27, 4),
            (2026, 8, 1, 4),
            (2026, 8, 6, 4),
            "2026-07-27T00:00:00 – 2026-08-05T23:59:59 Eastern",
        ),
        # October: DST ends on Sunday 2026-11-01 inside the window; edges stay at local midnight.
        (
            Period(2026, 10),
            (2026, 10, 27, 4),
            (2026, 11, 1, 4),
            (2026, 11, 6, 5),
            "2026-10-27T00:00:00 – 2026-11-05T23:59:59 Eastern",
        ),
        # December: the window runs into the next year.
        (
            Period(2026, 12),
            (2026, 12, 27, 5),
            (2027, 1, 1, 5),
            (2027, 1, 6, 5),
            "2026-12-27T00:00:00 – 2027-01-05T23:59:59 Eastern",
        ),
    ],
)
def test_window_edges_are_eastern_local_midnights(
    period: Period,
    open_utc: tuple[int, ...],
    end_utc: tuple[int, ...],
    close_utc: tuple[int, ...],
    shown: str,
) -> None:
    window = window_for(period, 5, 5)
    assert (window.open_ms, window.end_ms, window.close_ms) == (
        utc_ms(*open_utc),
        utc_ms(*end_utc),
        utc_ms(*close_utc),
    )
    assert window.describe() == shown
    assert window_at(window.open_ms, 5, 5) == window
    assert window_at(window.close_ms - 1, 5, 5) == window
    assert window_at(window.open_ms - 1, 5, 5) is None
    assert window_at(window.close_ms, 5, 5) is None


def test_configurable_edges() -> None:
    window = window_for(Period(2026, 1), 3, 7)
    assert eastern(window.open_ms) == "2026-01-29T00:00:00"
    assert eastern(window.close_ms) == "2026-02-08T00:00:00"


def test_next_and_closed_windows() -> None:
    now = utc_ms(2026, 2, 15)  # between January's and February's windows
    assert window_at(now, 5, 5) is None
    assert next_window(now, 5, 5).period == Period(2026, 2)
    assert last_closed_window(now, 5, 5).period == Period(2026, 1)
    inside = window_for(Period(2026, 2), 5, 5).open_ms + 1
    assert next_window(inside, 5, 5).period == Period(2026, 3)  # not the one open now
    closed = closed_windows(utc_ms(2025, 11, 1), now, 5, 5)
    assert [w.period.key for w in closed] == ["2025-10", "2025-11", "2025-12", "2026-01"]
    assert closed_windows(now, now + 1, 5, 5) == []


def test_period_arithmetic() -> None:
    assert Period.parse("2026-12").next() == Period(2027, 1)
    assert Period(2026, 1).previous() == Period(2025, 12)
    assert Period(2026, 2).last_day().day == 28
    assert Period(2026, 1).label() == "January 2026"
    with pytest.raises(ValueError):
        Period.parse("2026-13")


def test_meter_date_is_eastern_wall_clock_truncated_to_the_second() -> None:
    # 2026-02-01T04:59:59.999Z is 23:59:59.999 EST: it must never render as midnight.
    assert eastern(utc_ms(2026, 2, 1, 4, 59, 59) + 999) == "2026-01-31T23:59:59"
    assert eastern(utc_ms(2026, 8, 1, 3, 59, 42)) == "2026-07-31T23:59:42"  # EDT
    # The repeated hour of 2026-11-01: both instants render 01:30:00 (the API has no offset).
    assert eastern(utc_ms(2026, 11, 1, 5, 30)) == eastern(utc_ms(2026, 11, 1, 6, 30))
    assert parse_local_naive("2026-07-31T23:59:42", "America/New_York") == utc_ms(
        2026, 8, 1, 3, 59, 42
    )
    assert local_naive_iso8601(0, "UTC") == "1970-01-01T00:00:00"
    with pytest.raises(ValueError):
        parse_local_naive("2026-07-31T23:59:42-04:00", "America/New_York")


def test_kwh_keeps_the_register_not_float_noise() -> None:
    assert kwh(2_835_300.0000000005) == 2835.3
    assert kwh(2_835_299.9999999995) == 2835.3  # float noise does not cost a digit
    assert kwh(10_453_912.0, 3) == 10453.912


def test_kwh_is_rounded_down_to_the_configured_decimals() -> None:
    """What PTS stores (one decimal in every example of the document); rounded down, as a
    meter's display shows its register: never energy not yet counted."""
    assert kwh(10_453_999.0) == 10453.9
    assert kwh(10_453_999.0, 0) == 10453.0
    assert kwh(10_453_912.0, 2) == 10453.91


def reading(ts_ms: int, value: float = 100.0) -> Reading:
    return Reading(1, ts_ms, value, eastern(ts_ms))


def test_reading_nearest_to_month_end_ties_go_to_before() -> None:
    window = window_for(Period(2026, 1), 5, 5)
    end = window.end_ms
    before, after = reading(end - 60_000), reading(end + 60_000)
    assert choose_reading(window, before, after) == before  # equal distance
    assert choose_reading(window, reading(end - 61_000), after) == after
    assert choose_reading(window, before, reading(end + 61_000)) == before
    assert choose_reading(window, None, after) == after
    assert choose_reading(window, before, None) == before
    assert choose_reading(window, None, None) is None
    # A sample stamped 40 ms after midnight has MeterDate midnight: it is "at" the month end.
    at_midnight = reading(end + 40)
    assert at_midnight.meter_date == "2026-02-01T00:00:00"
    assert choose_reading(window, reading(end - 1000), at_midnight) == at_midnight


def test_reading_of_a_stored_sample() -> None:
    stored = StoredSample(7, Sample("pv", utc_ms(2026, 2, 1, 5), {"energy_active_import": 6.1e6}))
    assert reading_of(stored, "energy_active_import") == Reading(
        7, utc_ms(2026, 2, 1, 5), 6100.0, "2026-02-01T00:00:00"
    )
    assert reading_of(stored, "energy_active_export") is None
    nan = StoredSample(8, Sample("pv", 0, {"energy_active_import": float("nan")}))
    assert reading_of(nan, "energy_active_import") is None


LAST = LastReading(
    5000.0, "2025-12-31T23:45:00", parse_local_naive("2025-12-31T23:45:00", "America/New_York")
)


def at(text: str, value: float) -> Reading:
    return Reading(1, parse_local_naive(text, "America/New_York"), value, text)


def test_checks_pass_a_plausible_reading() -> None:
    ok = at("2026-02-01T00:00:00", 6100.0)
    assert check_reading(ok, LAST, capacity_kw=10.0, factor=1.0) == []
    assert check_reading(ok, None, capacity_kw=None, factor=1.0) == []


@pytest.mark.parametrize(
    ("value", "capacity", "factor", "expected"),
    [
        (0.0, None, 1.0, ["is not positive"]),
        (4999.0, None, 1.0, ["below the last accepted reading 5000 kWh", "-1.000 kWh"]),
        (5000.0, None, 1.0, ["equals the last accepted reading 5000 kWh"]),
        # 744.25 h since the last reading: 10 kW can make at most 7442.5 kWh.
        (12_500.0, 10.0, 1.0, ["7500.000 kWh produced in 744.2 h", "= 7442.500 kWh"]),
        (7000.0, 10.0, 0.25, ["factor 0.25 = 1860.625 kWh"]),
    ],
)
def test_checks_report_the_numbers(
    value: float, capacity: float | None, factor: float, expected: list[str]
) -> None:
    problems = check_reading(
        at("2026-02-01T00:00:00", value), LAST, capacity_kw=capacity, factor=factor
    )
    text = " | ".join(problems)
    assert problems
    for fragment in expected:
        assert fragment in text


def test_a_reading_not_after_the_last_one_is_refused() -> None:
    problems = check_reading(at("2025-12-30T00:00:00", 5001.0), LAST, capacity_kw=10.0, factor=1.0)
    assert any("not later than" in p for p in problems)


@pytest.mark.parametrize(
    ("notes", "before_end", "remedy"),
    [
        ("MeterDate is outside the current reporting window", True, Remedy.READING_AFTER_MONTH_END),
        ("MeterDate is outside the current reporting window", False, None),
        ("Validation service temporarily unavailable, try again", True, Remedy.RESEND),
        ("Production is above the system capacity for the period", True, None),
        ("MeterValue is below the last reading (5000.0)", True, None),
        ("", True, None),
        (None, True, None),
    ],
)
def test_only_fixable_failures_have_a_remedy(
    notes: str | None, before_end: bool, remedy: Remedy | None
) -> None:
    assert remedy_for(notes, reading_was_before_end=before_end) is remedy


def test_submission_is_due_a_wall_clock_day_after_month_end() -> None:
    october = window_for(Period(2026, 10), 5, 5)
    assert eastern(submit_at(october, 1)) == "2026-11-02T00:00:00"  # 25 h: DST ended
    assert submit_at(october, 1) - october.end_ms == 25 * 3_600_000
    january = window_for(Period(2026, 1), 5, 5)
    assert eastern(submit_at(january, 0.5)) == "2026-02-01T12:00:00"


def test_an_answer_echoing_the_key_is_scrubbed() -> None:
    from pydantic import SecretStr

    from gateway.uplinks.pts.client import _scrub

    assert (
        _scrub(b'{"APIKey": "k3y", "x": 1}', SecretStr("k3y"))
        == b'{"APIKey": "**********", "x": 1}'
    )
