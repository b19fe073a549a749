"""Pure planning for Locus data calls: windows, timestamps, lifetime segments.

All calls use `tz=UTC`, so interval boundaries are UTC boundaries and `start`/`end` are UTC
wall-clock text. A window is [start, end): Locus returns the intervals whose (leading) `ts`
is >= start and < end.

Timestamps. Locus stamps an interval with its START ("leading" timestamp). A sample in the
store is stamped at the interval's END: an energy counter read at time T holds the energy up to
T, so a counter that includes the interval [ts, ts + g) belongs at ts + g, and the interval's
average power is stamped like a demand meter's, at the end of its interval. Consequences: an
interval is stored only once it is complete (end <= now), and the newest stored sample of a
meter is exactly where its next interval starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime

from gateway.timefmt import parse_iso8601_ms, utc_datetime

DAY_MS = 86_400_000


def locus_time(ts_ms: int) -> str:
    """`start`/`end` argument: UTC wall-clock time to the second (sent with tz=UTC)."""
    return utc_datetime(ts_ms - ts_ms % 1000).replace(tzinfo=None).isoformat(timespec="seconds")


def parse_ts(text: object) -> int:
    """Epoch ms of a data object's `ts` (`2014-04-01T12:00:00-07:00`); ValueError if not."""
    if not isinstance(text, str):
        raise ValueError(f"ts is not a string: {text!r}")
    return parse_iso8601_ms(text.replace("Z", "+00:00"))


def floor_to(ts_ms: int, step_ms: int) -> int:
    return ts_ms - ts_ms % step_ms


def ceil_to(ts_ms: int, step_ms: int) -> int:
    return -(-ts_ms // step_ms) * step_ms


def windows(start_ms: int, end_ms: int, window_ms: int) -> Iterator[tuple[int, int]]:
    """[start, end) cut into consecutive windows of at most `window_ms`, oldest first."""
    while start_ms < end_ms:
        stop = min(end_ms, start_ms + window_ms)
        yield start_ms, stop
        start_ms = stop


@dataclass(frozen=True)
class Segment:
    """One data call of a lifetime sum: `gran` over [start, end)."""

    gran: str
    start_ms: int
    end_ms: int


def _ms(day: date) -> int:
    return round(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def lifetime_segments(since: date, until_ms: int, gran: str) -> list[Segment]:
    """Calls whose interval sums add up to the energy from `since` to `until_ms`.

    Whole years by `yearly`, then whole months of the last year by `monthly`, whole days of
    the last month by `daily`, and the rest of the last day by the meter's own granularity
    (`until_ms` is on one of its boundaries): at most four calls, each inside its span limit.
    """
    until = utc_datetime(until_ms)
    year_start = _ms(date(until.year, 1, 1))
    month_start = _ms(date(until.year, until.month, 1))
    day_start = floor_to(until_ms, DAY_MS)
    begin = _ms(since)
    plan = [
        ("yearly", begin, year_start),
        ("monthly", max(begin, year_start), month_start),
        ("daily", max(begin, month_start), day_start),
        (gran, max(begin, day_start), until_ms),
    ]
    return [Segment(g, s, e) for g, s, e in plan if s < e]
