"""PTS reporting periods and windows, in Eastern time, and which stored sample to report.

Pure functions (no I/O): the uplink, the CLI and the tests share them.

- A *period* is the calendar month a reading closes (`2026-01`); its *end* is local midnight
  America/New_York starting the next month (`2026-02-01T00:00:00`, EST or EDT as the tz
  database says; the API text "Eastern Daylight Time" means US Eastern local time).
- Its *window* runs from local midnight `days_before` days before the end to local midnight
  `days_after` days after it, closed-open: with 5/5, January's window is 2026-01-27 00:00 to
  2026-02-06 00:00, MassCEC's "January 27th – February 5th". Windows never overlap
  (config keeps both ≤ 20 days). Local-midnight arithmetic keeps the edges at midnight across
  the November DST change, which falls inside October's window.
- The *reading* is the sample nearest to the end (by its second-resolution MeterDate, so a
  sample taken at 00:00:00.040 counts as "at midnight"); on equal distance the one at or before
  midnight wins. With wall-clock-aligned polling that is the sample at midnight itself; after
  an outage across midnight it is whichever side is closer (least energy attributed to the
  wrong month; at night a solar register does not move anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final

from core.sample import StoredSample
from gateway.timefmt import local_naive_iso8601, parse_local_naive, zone

EASTERN: Final = "America/New_York"
_DAY_MS: Final = 86_400_000


@dataclass(frozen=True, order=True, slots=True)
class Period:
    year: int
    month: int

    @classmethod
    def parse(cls, key: str) -> Period:
        """`2026-01` -> Period(2026, 1)."""
        year, _, month = key.partition("-")
        period = cls(int(year), int(month))
        if not 1 <= period.month <= 12:
            raise ValueError(f"not a month: {key!r}")
        return period

    @property
    def key(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    def next(self) -> Period:
        return Period(self.year + self.month // 12, self.month % 12 + 1)

    def previous(self) -> Period:
        return Period(self.year - (self.month == 1), (self.month - 2) % 12 + 1)

    def first_day(self) -> date:
        return date(self.year, self.month, 1)

    def last_day(self) -> date:
        return self.next().first_day() - timedelta(days=1)

    def label(self) -> str:
        return self.first_day().strftime("%B %Y")


def _midnight_ms(day: date) -> int:
    """Epoch ms of local midnight Eastern starting `day` (never in a DST gap: changes are 2 am)."""
    return int(datetime(day.year, day.month, day.day, tzinfo=zone(EASTERN)).timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Window:
    period: Period
    open_ms: int
    #: Month end: local midnight starting the next month.
    end_ms: int
    #: Exclusive: the first instant no longer inside.
    close_ms: int

    def contains(self, ts_ms: int) -> bool:
        return self.open_ms <= ts_ms < self.close_ms

    def describe(self) -> str:
        """`2026-01-27T00:00:00 – 2026-02-05T23:59:59 Eastern` (inclusive, as MassCEC says it)."""
        first = eastern(self.open_ms)
        last = eastern(self.close_ms - 1000)
        return f"{first} – {last} Eastern"


def submit_at(window: Window, days: float) -> int:
    """When the automatic submission is due: `days` after the month end in Eastern wall-clock
    time (one day after the end of October is November 2 00:00 EST, 25 hours later)."""
    end = datetime.fromtimestamp(window.end_ms // 1000, zone(EASTERN))
    return int((end + timedelta(days=days)).timestamp() * 1000)


def window_for(period: Period, days_before: int, days_after: int) -> Window:
    end_day = period.next().first_day()
    return Window(
        period,
        _midnight_ms(end_day - timedelta(days=days_before)),
        _midnight_ms(end_day),
        _midnight_ms(end_day + timedelta(days=days_after)),
    )


def eastern_date(ts_ms: int) -> date:
    return datetime.fromtimestamp(ts_ms // 1000, zone(EASTERN)).date()


def window_at(ts_ms: int, days_before: int, days_after: int) -> Window | None:
    """The window open at `ts_ms`, if any."""
    today = eastern_date(ts_ms)
    this = Period(today.year, today.month)
    for period in (this, this.previous()):
        window = window_for(period, days_before, days_after)
        if window.contains(ts_ms):
            return window
    return None


def next_window(ts_ms: int, days_before: int, days_after: int) -> Window:
    """The first window that opens after `ts_ms` (not the one open now)."""
    today = eastern_date(ts_ms)
    period = Period(today.year, today.month).previous()
    while True:
        window = window_for(period, days_before, days_after)
        if window.open_ms > ts_ms:
            return window
        period = period.next()


def closed_windows(after_ms: int, until_ms: int, days_before: int, days_after: int) -> list[Window]:
    """Windows whose close lies in (after_ms, until_ms], oldest first (at most about a year)."""
    start = eastern_date(max(after_ms, until_ms - 400 * _DAY_MS))
    period = Period(start.year, start.month).previous()
    found: list[Window] = []
    while True:
        window = window_for(period, days_before, days_after)
        if window.close_ms > until_ms:
            return found
        if window.close_ms > after_ms:
            found.append(window)
        period = period.next()


def last_closed_window(ts_ms: int, days_before: int, days_after: int) -> Window:
    """The most recent window closed at or before `ts_ms`."""
    today = eastern_date(ts_ms)
    period = Period(today.year, today.month)
    while True:
        window = window_for(period, days_before, days_after)
        if window.close_ms <= ts_ms:
            return window
        period = period.previous()


def eastern(ts_ms: int) -> str:
    """PTS's MeterDate: Eastern local time to the second, `YYYY-MM-DDTHH:MM:SS`."""
    return local_naive_iso8601(ts_ms, EASTERN)


def parse_meter_date(meter_date: str | None) -> int | None:
    """Epoch ms of a MeterDate PTS sent (see `eastern`); None when absent or unreadable."""
    if not meter_date:
        return None
    try:
        return parse_local_naive(meter_date, EASTERN)
    except ValueError:
        return None


# -- the reading ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    """What is submitted for one system: MeterValue (kWh) at MeterDate (Eastern)."""

    sample_id: int
    ts_ms: int
    value_kwh: float
    meter_date: str

    def as_json(self) -> dict[str, object]:
        return {"MeterValue": self.value_kwh, "MeterDate": self.meter_date}


#: MeterValue decimals by default: every example in the PTS document has one ("MeterValue":
#: 2835.3), so that is what PTS is taken to store and echo.
DEFAULT_DECIMALS: Final = 1


def kwh(value_wh: float, decimals: int = DEFAULT_DECIMALS) -> float:
    """Wh (store) -> kWh (PTS), rounded DOWN to `decimals`, as a meter's display shows its
    register: `2835399.9` -> `2835.3`. Never more energy than the register had counted;
    the part cut off is reported with the next month. Float noise (`2835299.9999999995`)
    does not cost a digit."""
    scale: int = 10**decimals
    return round(math.floor(round(value_wh / 1000.0 * scale, 6)) / scale, decimals)


def reading_of(
    stored: StoredSample, channel: str, decimals: int = DEFAULT_DECIMALS
) -> Reading | None:
    value = stored.sample.values.get(channel)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None
    ts_ms = stored.sample.ts_ms
    return Reading(stored.rowid, ts_ms, kwh(value, decimals), eastern(ts_ms))


def choose_reading(window: Window, before: Reading | None, after: Reading | None) -> Reading | None:
    """The reading nearest to the month end; on a tie the one at or before midnight.

    `before` is the last candidate whose MeterDate (to the second) is at or before the end,
    `after` the first one later; both must lie inside the window (the caller's query).
    """
    if before is None or after is None:
        return before or after
    before_gap = window.end_ms - (before.ts_ms // 1000) * 1000
    after_gap = (after.ts_ms // 1000) * 1000 - window.end_ms
    return before if before_gap <= after_gap else after
