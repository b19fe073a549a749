"""Hourly counter readings from irregular samples: exact at each UTC hour boundary, or not at all.

Rules (EnerKey's hourly push, and any other service that wants "the reading at hh:00"):
- The reading at boundary B is the sample stamped exactly B, or the linear interpolation
  between the last sample before B and the first after it when those two are at most
  `max_gap_ms` apart and the counter did not go down between them.
- Nothing is extrapolated: B is decided only once a sample at or after B exists. Until then it
  stays pending, however long the meter is silent.
- A boundary that cannot be read that way is a Gap (reported, never invented).
- A sample flagged `clock_unsynced` is ignored (a reading at an unknown time cannot be an hour
  boundary). A sample flagged `counter_reset`/`counter_jump` (gateway.counters) starts a new
  series: nothing is interpolated between it and the sample before (those boundaries are a
  Gap), and the first reading after it says so (`series_break`): a consumption between that
  reading and the one an hour earlier would span two series.
- Boundaries are UTC hours (multiples of 3 600 000 ms): a local DST change never adds or
  removes one.

Resuming: every event carries `cursor`, a store position from which re-reading the meter's
samples with `next_hour_ms` = the event's last hour + 1 h decides exactly the same later events.
So an uplink commits (cursor, next hour) after delivering an event and loses or repeats nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from core.flags import CLOCK_UNSYNCED, COUNTER_JUMP, COUNTER_RESET
from core.sample import StoredSample
from gateway.timefmt import HOUR_MS, ceil_hour_ms, floor_hour_ms, utc_iso8601

#: Samples with these flags are not used (their time or value is not trustworthy).
UNTRUSTED_FLAGS: Final = frozenset({CLOCK_UNSYNCED})
#: Samples with these flags start a new series of the counter (gateway.counters).
BREAK_FLAGS: Final = {COUNTER_RESET: "counter reset", COUNTER_JUMP: "counter jump"}


@dataclass(frozen=True, slots=True)
class HourReading:
    """The counter at `hour_ms` (in the channel's stored unit, e.g. Wh)."""

    hour_ms: int
    value: float
    #: A sample lay exactly on the boundary (no interpolation).
    exact: bool
    cursor: int
    #: The counter started a new series in the hour ending here ("counter reset" or
    #: "counter jump"): this reading minus the previous hour's is no consumption.
    series_break: str | None = None

    @property
    def last_hour_ms(self) -> int:
        return self.hour_ms


@dataclass(frozen=True, slots=True)
class Gap:
    """Boundaries first_hour_ms..last_hour_ms (inclusive) have no reading."""

    first_hour_ms: int
    last_hour_ms: int
    #: The samples around the gap (epoch ms); `before_ms` is None when nothing came before.
    before_ms: int | None
    after_ms: int
    #: "no samples" (further apart than the allowed gap), "counter decreased", or a
    #: flagged "counter reset" / "counter jump" between the two samples.
    reason: str
    cursor: int

    @property
    def hours(self) -> int:
        return (self.last_hour_ms - self.first_hour_ms) // HOUR_MS + 1

    def describe(self, meter: str, max_gap_secs: float) -> str:
        """The alert text: which hours have no reading, and why."""
        before = "the first sample" if self.before_ms is None else utc_iso8601(self.before_ms)
        after = utc_iso8601(self.after_ms)
        why = (
            f"samples {before} and {after} are more than {max_gap_secs:g} s apart"
            if self.reason == "no samples"
            else f"the counter went down between {before} and {after}"
            if self.reason == "counter decreased"
            else f"a {self.reason} flagged at {after}: no interpolation across two counter series"
        )
        return (
            f"meter {meter}: no reading for {self.hours} hour(s) "
            f"{utc_iso8601(self.first_hour_ms)} .. {utc_iso8601(self.last_hour_ms)} ({why}); "
            "left out, not invented"
        )


Event = HourReading | Gap


class HourlyReadings:
    """Feed one meter's samples in store order; collects decided boundaries as events.

    `next_hour_ms` is the first boundary still to decide (None: the first one at or after the
    first usable sample). Not thread-safe; one instance per meter stream.
    """

    __slots__ = ("_break", "_prev", "channel", "max_gap_ms", "next_hour_ms", "skipped")

    def __init__(self, channel: str, max_gap_ms: int, next_hour_ms: int | None = None) -> None:
        if max_gap_ms <= 0:
            raise ValueError("max_gap_ms must be positive")
        if next_hour_ms is not None and next_hour_ms % HOUR_MS:
            raise ValueError("next_hour_ms must be an hour boundary")
        self.channel = channel
        self.max_gap_ms = max_gap_ms
        self.next_hour_ms = next_hour_ms
        #: (ts_ms, value, rowid) of the newest usable sample before next_hour_ms.
        self._prev: tuple[int, float, int] | None = None
        #: Samples without a usable value for the channel (missing, NaN, untrusted).
        self.skipped = 0
        #: (ts_ms, reason) of the newest series-breaking sample fed.
        self._break: tuple[int, str] | None = None

    def feed(self, stored: StoredSample, out: list[Event]) -> None:
        """Take the next sample; append the boundaries it decides to `out`, in time order."""
        sample = stored.sample
        value = sample.values.get(self.channel)
        if (
            value is None
            or value.__class__ is bool
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or (sample.flags and not sample.flags.isdisjoint(UNTRUSTED_FLAGS))
        ):
            self.skipped += 1
            return
        value = float(value)
        ts = sample.ts_ms
        rowid = stored.rowid
        breaking = None
        if sample.flags:
            breaking = next(
                (BREAK_FLAGS[f] for f in sorted(sample.flags) if f in BREAK_FLAGS), None
            )
            if breaking is not None:
                self._break = (ts, breaking)
        hour = self.next_hour_ms
        if hour is None:
            hour = self.next_hour_ms = ceil_hour_ms(ts)
        if ts < hour:
            self._prev = (ts, value, rowid)
            return
        prev = self._prev
        if (
            prev is not None
            and breaking is None
            and ts - prev[0] <= self.max_gap_ms
            and value >= prev[1]
        ):
            prev_ts, prev_value, prev_rowid = prev
            span = ts - prev_ts
            rise = value - prev_value
            while hour < ts:
                reading = prev_value + rise * ((hour - prev_ts) / span)
                out.append(HourReading(hour, reading, False, prev_rowid - 1, self._broken(hour)))
                hour += HOUR_MS
        else:
            last_missing = floor_hour_ms(ts - 1)
            if last_missing >= hour:
                if prev is None:
                    before, cursor = None, rowid - 1
                else:
                    before, cursor = prev[0], prev[2] - 1
                reason = (
                    breaking
                    if breaking is not None and prev is not None
                    else "counter decreased"
                    if prev is not None and ts - prev[0] <= self.max_gap_ms
                    else "no samples"
                )
                out.append(Gap(hour, last_missing, before, ts, reason, cursor))
            hour = last_missing + HOUR_MS
        if hour == ts:
            out.append(HourReading(hour, value, True, rowid - 1, self._broken(hour)))
            hour += HOUR_MS
        self.next_hour_ms = hour
        self._prev = (ts, value, rowid)

    def _broken(self, hour_ms: int) -> str | None:
        """Why the hour ending at `hour_ms` spans two series, if it does. Decided by sample
        time only, so re-reading from an event's cursor decides the same."""
        if self._break is not None and hour_ms - HOUR_MS < self._break[0] <= hour_ms:
            return self._break[1]
        return None
