"""The checks a PTS reading must pass before it may spend quota, and which failures we can fix.

A reading that fails a local check is never submitted, nor one whose sample the gateway
flagged `counter_reset`/`counter_jump` (`clock_unsynced` samples are never chosen at all): each
problem is a sentence with the numbers a human needs (the alert and `meter-gateway pts status`
show them).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from core.flags import COUNTER_JUMP, COUNTER_RESET
from gateway.uplinks.pts.window import Reading, parse_meter_date

#: Float noise below any decimal PTS keeps.
_EPSILON_KWH: Final = 1e-6


def echo_tolerance_kwh(decimals: int) -> float:
    """How far PTS's echo of a MeterValue (GetSubmissionStatus, GetLastReading) may be from
    what was sent and still be the same reading: one step of the rounding (0.1 kWh at one
    decimal), so a service that stores or rounds differently still recognises our own
    reading. The MeterDate must match as well, which no other reading does."""
    return 10.0**-decimals + _EPSILON_KWH


def equal_tolerance_kwh(decimals: int) -> float:
    """Two readings closer than this are equal at the submitted precision (half a step)."""
    return 0.5 * 10.0**-decimals


@dataclass(frozen=True, slots=True)
class LastReading:
    """PTS's last accepted reading of a system (GetLastReading)."""

    value_kwh: float | None
    meter_date: str | None
    ts_ms: int | None


def same_date(date_a: str | None, date_b: str | None) -> bool:
    """The same MeterDate, as written or as an instant (PTS may echo `...T00:00:00.000`)."""
    if date_a is None or date_b is None:
        return False
    if date_a == date_b:
        return True
    when_a, when_b = parse_meter_date(date_a), parse_meter_date(date_b)
    return when_a is not None and when_a == when_b


def same_reading(
    value_a: float,
    date_a: str,
    value_b: float | None,
    date_b: str | None,
    *,
    tolerance_kwh: float,
) -> bool:
    """Is (value_b, date_b), e.g. PTS's echo, the reading (value_a, date_a)?"""
    return (
        value_b is not None
        and abs(value_a - value_b) <= tolerance_kwh
        and same_date(date_a, date_b)
    )


def check_reading(
    reading: Reading,
    last: LastReading | None,
    *,
    capacity_kw: float | None,
    factor: float,
    decimals: int = 1,
) -> list[str]:
    """Problems that forbid submitting `reading`; empty when it may be submitted (values
    compared at the submitted precision, `decimals`)."""
    same_kwh = equal_tolerance_kwh(decimals)
    problems: list[str] = []
    if reading.value_kwh <= 0:
        problems.append(
            f"MeterValue {reading.value_kwh:g} kWh at {reading.meter_date} is not positive "
            "(PTS refuses 0; is the channel the lifetime production register?)"
        )
    if last is None or last.value_kwh is None:
        return problems
    since = f"last accepted reading {last.value_kwh:g} kWh of {last.meter_date or 'unknown date'}"
    if reading.value_kwh < last.value_kwh - same_kwh:
        problems.append(
            f"MeterValue {reading.value_kwh:g} kWh at {reading.meter_date} is below the {since} "
            f"({reading.value_kwh - last.value_kwh:+.3f} kWh): meter replaced or reset? "
            "The help desk must record a meter change"
        )
    elif abs(reading.value_kwh - last.value_kwh) < same_kwh:
        problems.append(
            f"MeterValue {reading.value_kwh:g} kWh at {reading.meter_date} equals the {since}: "
            "no production recorded (PTS refuses an unchanged reading)"
        )
    if last.ts_ms is not None and reading.ts_ms <= last.ts_ms:
        problems.append(
            f"MeterDate {reading.meter_date} is not later than the {since} (gateway clock?)"
        )
    elif last.ts_ms is not None and capacity_kw is not None:
        hours = (reading.ts_ms - last.ts_ms) / 3_600_000
        energy = reading.value_kwh - last.value_kwh
        ceiling = capacity_kw * hours * factor
        if energy > ceiling:
            problems.append(
                f"{energy:.3f} kWh produced in {hours:.1f} h since the {since} is more than "
                f"capacity {capacity_kw:g} kW × {hours:.1f} h × factor {factor:g} = "
                f"{ceiling:.3f} kWh (meter scale wrong, or wrong meter?)"
            )
    return problems


#: Sample flags (gateway.counters) that forbid submitting the reading, and what they mean.
REFUSED_FLAGS: Final = {
    COUNTER_RESET: "the counter went down: meter replaced, rolled over or reset?",
    COUNTER_JUMP: "the counter rose faster than the meter's maximum power allows",
}


def flag_problems(reading: Reading, flags: frozenset[str], previous: Reading | None) -> list[str]:
    """Problems a flagged sample brings: it is never submitted automatically (a human decides,
    e.g. the help desk records a meter change)."""
    problems: list[str] = []
    for flag in sorted(flags & REFUSED_FLAGS.keys()):
        before = (
            "no earlier stored sample"
            if previous is None
            else f"{previous.value_kwh:g} kWh at {previous.meter_date}"
        )
        problems.append(
            f"MeterValue {reading.value_kwh:g} kWh at {reading.meter_date} is flagged {flag} "
            f"by the gateway (previous sample: {before}): {REFUSED_FLAGS[flag]} Not submitted: "
            "check the meter (the help desk records a meter change) and report this month "
            "in the PTS portal"
        )
    return problems


class Remedy(StrEnum):
    """What the gateway can change by itself after a Failed validation."""

    #: The date was refused (window edge, time zone): report the nearest reading dated after
    #: the month end, which lies inside any reading of the window rule.
    READING_AFTER_MONTH_END = "reading_after_month_end"
    #: PTS says its validation itself failed (try again): the same reading once more.
    RESEND = "resend"


_DATE_WORDS = ("window", "meterdate", "meter date", "reporting period", "date")
_TRANSIENT_WORDS = ("try again", "temporar", "timeout", "timed out", "unavailable")
#: Words that name the reading's value: no date change fixes those.
_VALUE_WORDS = ("capacity", "below", "less than", "lower", "equal", "zero", "production", "value")


def remedy_for(notes: str | None, *, reading_was_before_end: bool) -> Remedy | None:
    """The fix for a Failed validation whose ValidationNotes are `notes`, or None (a human)."""
    text = (notes or "").lower()
    if not text:
        return None
    if any(word in text for word in _TRANSIENT_WORDS):
        return Remedy.RESEND
    if any(word in text for word in _VALUE_WORDS):
        return None
    if reading_was_before_end and any(word in text for word in _DATE_WORDS):
        return Remedy.READING_AFTER_MONTH_END
    return None
