"""Read MTS answers tolerantly: the API document contradicts itself, so every variant it shows
is accepted (NOTES.md) and anything unrecognised is ignored or counted, never raised.

Variants handled: `result` / `resultSummary`; `registers` / `registerValues` (groups holding
`registerValues`, or flat register objects); `testId` / `testid` (any key case); numbers as
JSON numbers or strings with thousands separators (`"2,380,181"`, `"-1,990.000"`); `details`
as a string or a list; times with or without `Z` (all MTS times are UTC, note 2); a garbled
`meterTime` such as `2019-01-02T03T04:02:15 +10s` (the last date and clock time are used).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_GROUPED_NUMBER = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?$")
_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2}(?:\.\d+)?)\s*(Z|[+-]\d{2}:?\d{2})?$", re.ASCII
)
_METER_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2}).*?(\d{2}:\d{2}:\d{2})Z?\s*(?:([+-])\s*(\d+(?:\.\d+)?)\s*s)?\s*$",
    re.ASCII,
)


class TestState(StrEnum):
    PENDING = "pending"
    SUCCESS = "success"
    PARTIAL = "partial"
    ERROR = "error"
    #: A result string we do not know: treated like pending (polled again) and counted.
    UNKNOWN = "unknown"


def key(data: Mapping[str, Any], *names: str) -> Any:
    """The value of the first of `names` present, compared case-insensitively (`testid`)."""
    lowered = {str(k).lower(): v for k, v in data.items()}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def number(value: object) -> float | None:
    """A finite float from a JSON number or a string like "2,380,181"; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if _GROUPED_NUMBER.match(text):
            text = text.replace(",", "")
        elif not _PLAIN_NUMBER.match(text):
            return None
        result = float(text)
    else:
        return None
    return result if math.isfinite(result) else None


def integer(value: object) -> int | None:
    """A test id: an int, or a string of digits."""
    parsed = number(value)
    if parsed is None or parsed != int(parsed):
        return None
    return int(parsed)


def utc_ms(value: object) -> int | None:
    """Epoch ms of an MTS time (`YYYY-MM-DDTHH:mm:ss[Z]`; no offset means UTC)."""
    if not isinstance(value, str):
        return None
    match = _TIME.match(value.strip())
    if not match:
        return None
    zone = match.group(3)
    text = f"{match.group(1)}T{match.group(2)}"
    if zone and zone != "Z":
        text += zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1000)


def details(body: object) -> str:
    """The `details` of an error answer as one line (a string or a list of strings)."""
    if isinstance(body, Mapping):
        found = key(body, "details", "detail", "message")
        if isinstance(found, str):
            return found.strip()
        if isinstance(found, list):
            return "; ".join(str(item).strip() for item in found if str(item).strip())
    return ""


@dataclass(frozen=True)
class Register:
    category: str
    name: str
    value: float | None
    units: str


@dataclass(frozen=True)
class SurveyChannel:
    name: str
    units: str
    #: (period start, epoch ms UTC; value) for every readable reading, as sent.
    readings: list[tuple[int, float]]
    #: Readings that could not be read (no time, not a number).
    bad: int = 0


@dataclass
class TestStatus:
    """One `test-status` answer, as far as it could be read."""

    test_id: int | None
    state: TestState
    result: str
    error: str | None = None
    request_reference: str | None = None
    #: The serial number the meter gave, or None; `serial_error` when MTS says ERROR.
    serial: str | None = None
    serial_error: str | None = None
    #: The meter's clock (UTC ms as the meter showed it) and its offset from real time (s).
    meter_time_ms: int | None = None
    clock_offset_s: float | None = None
    meter_time_error: str | None = None
    #: When the meter was read (real time, UTC ms): meterTime corrected, or connection end.
    read_ms: int | None = None
    registers: list[Register] = field(default_factory=list)
    survey: list[SurveyChannel] = field(default_factory=list)
    #: What could not be read (counted as garbage by the caller).
    problems: list[str] = field(default_factory=list)


def classify_result(text: object) -> tuple[TestState, str | None]:
    if not isinstance(text, str):
        return TestState.UNKNOWN, None
    upper = text.strip().upper()
    if upper == "PENDING":
        return TestState.PENDING, None
    if upper == "SUCCESS":
        return TestState.SUCCESS, None
    if upper in ("PARTIAL SUCCESS", "PARTIAL_SUCCESS", "PARTIALSUCCESS"):
        return TestState.PARTIAL, None
    if upper.startswith("ERROR"):
        return TestState.ERROR, text.strip()[5:].lstrip(" :-").strip() or "no details"
    return TestState.UNKNOWN, None


def parse_status(body: object) -> TestStatus | None:
    """None when the answer is not an object with a result at all (garbage)."""
    if not isinstance(body, Mapping):
        return None
    raw = key(body, "result", "resultSummary")
    state, error = classify_result(raw)
    if raw is None:
        return None
    status = TestStatus(
        test_id=integer(key(body, "testId")),
        state=state,
        result=str(raw),
        error=error,
    )
    reference = key(body, "requestReference")
    status.request_reference = reference if isinstance(reference, str) else None
    if state in (TestState.SUCCESS, TestState.PARTIAL):
        _read_serial(body, status)
        _read_meter_time(body, status)
        status.registers = _registers(key(body, "registers", "registerValues"), status.problems)
        status.survey = _survey(key(body, "surveyData"), status.problems)
        if status.read_ms is None:
            status.read_ms = utc_ms(key(body, "connectionEndTime")) or utc_ms(
                key(body, "testEndTime")
            )
    return status


def _read_serial(body: Mapping[str, Any], status: TestStatus) -> None:
    serial = key(body, "serialNumber")
    if isinstance(serial, str | int) and not isinstance(serial, bool):
        text = str(serial).strip()
        if text.upper().startswith("ERROR"):
            status.serial_error = text[5:].lstrip(" :-").strip() or "no details"
        elif text:
            status.serial = text


def _read_meter_time(body: Mapping[str, Any], status: TestStatus) -> None:
    text = key(body, "meterTime")
    if not isinstance(text, str) or not text.strip():
        return
    if text.strip().upper().startswith("ERROR"):
        status.meter_time_error = text.strip()[5:].lstrip(" :-").strip() or "no details"
        return
    match = _METER_TIME.search(text)
    if not match:
        status.problems.append(f"meterTime not understood: {text[:60]!r}")
        return
    meter_ms = utc_ms(f"{match.group(1)}T{match.group(2)}")
    if meter_ms is None:
        status.problems.append(f"meterTime not understood: {text[:60]!r}")
        return
    status.meter_time_ms = meter_ms
    if match.group(4) is not None:
        offset = float(match.group(4)) * (-1 if match.group(3) == "-" else 1)
        status.clock_offset_s = offset
        # "-203s": the meter was 203 s behind real time, so real time = meter time + 203 s.
        status.read_ms = meter_ms - round(offset * 1000)


def _registers(groups: object, problems: list[str]) -> list[Register]:
    if groups is None:
        return []
    if not isinstance(groups, list):
        problems.append("registers is not a list")
        return []
    found: list[Register] = []
    for group in groups:
        if not isinstance(group, Mapping):
            problems.append("a register group is not an object")
            continue
        inner = key(group, "registerValues", "registers", "values")
        if isinstance(inner, list):
            category = key(group, "category")
            for item in inner:
                register = _register(item, str(category or ""))
                if register is None:
                    problems.append("a register value is not an object with a name")
                else:
                    found.append(register)
        elif key(group, "name") is not None:  # a flat list of register values
            register = _register(group, "")
            if register is not None:
                found.append(register)
        else:
            problems.append("a register group without registerValues")
    return found


def _register(item: object, category: str) -> Register | None:
    if not isinstance(item, Mapping):
        return None
    name = key(item, "name")
    if not isinstance(name, str) or not name.strip():
        return None
    units = key(item, "units", "unit")
    return Register(category, name.strip(), number(key(item, "value")), _text(units))


def _survey(channels: object, problems: list[str]) -> list[SurveyChannel]:
    if channels is None:
        return []
    if not isinstance(channels, list):
        problems.append("surveyData is not a list")
        return []
    found: list[SurveyChannel] = []
    for channel in channels:
        name = key(channel, "name") if isinstance(channel, Mapping) else None
        if not isinstance(name, str) or not name.strip():
            problems.append("a survey channel is not an object with a name")
            continue
        assert isinstance(channel, Mapping)
        readings = key(channel, "readings", "values", "data")
        if readings is None:  # the document's sample leaves the list's key out
            lists = [v for v in channel.values() if isinstance(v, list)]
            readings = lists[0] if len(lists) == 1 else None
        if not isinstance(readings, list):
            problems.append(f"survey channel {name!r} has no readings")
            continue
        good: list[tuple[int, float]] = []
        bad = 0
        for reading in readings:
            ts = value = None
            if isinstance(reading, Mapping):
                ts = utc_ms(key(reading, "timestamp", "time"))
                value = number(key(reading, "value"))
            if ts is None or value is None:
                bad += 1
            else:
                good.append((ts, value))
        if bad:
            problems.append(f"{bad} unreadable reading(s) in survey channel {name!r}")
        found.append(SurveyChannel(name.strip(), _text(key(channel, "units")), good, bad))
    return found


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


@dataclass(frozen=True)
class TestSummary:
    test_id: int
    request_reference: str | None
    state: TestState
    received_ms: int | None


@dataclass(frozen=True)
class SearchPage:
    total: int
    count: int
    offset: int
    results: list[TestSummary]


def parse_search(body: object) -> SearchPage | None:
    """One `test-search` page; None when it is not an object with a readable total."""
    if not isinstance(body, Mapping):
        return None
    total = integer(key(body, "totalResultCount"))
    raw = key(body, "results")
    if raw is None:
        raw = []
    if total is None or not isinstance(raw, list):
        return None
    results: list[TestSummary] = []
    for item in raw:
        if not isinstance(item, Mapping):
            continue
        test_id = integer(key(item, "testId"))
        if test_id is None:
            continue
        reference = key(item, "requestReference")
        state, _ = classify_result(key(item, "resultSummary", "result"))
        results.append(
            TestSummary(
                test_id,
                reference if isinstance(reference, str) else None,
                state,
                utc_ms(key(item, "receivedTimestamp")),
            )
        )
    count = integer(key(body, "resultCount"))
    offset = integer(key(body, "offset"))
    return SearchPage(
        total, len(results) if count is None else count, 0 if offset is None else offset, results
    )
