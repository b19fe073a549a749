"""The recent past the status page draws: per meter its power and its energy counter, per
uplink its backlog, over the last `window_secs`, one point per `bucket_secs`.

Invariants:
- Read from Health (and the measured backlogs it holds) every few seconds, never from the
  data path or the store: drawing a chart costs the meters and uplinks nothing.
- Memory is fixed: each series is two preallocated arrays (a few KB), whatever the uptime.
- Power is the mean of a bucket, counters the last value in it (a counter's mean means
  nothing); non-finite values are skipped.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array

from core.health import Health

#: One point per minute over six hours, by default.
BUCKET_S = 60.0
WINDOW_S = 6 * 3600.0
#: How often Health is sampled.
SAMPLE_EVERY_S = 5.0
#: The channel drawn as power, and the counters drawn as "energy", first present wins.
POWER_CHANNEL = "power_active"
COUNTER_PREFERENCE = (
    "energy_active_import",
    "energy_active_total",
    "energy_active_export",
    "heat_energy",
    "gas_volume",
    "water_volume",
)


class Series:
    """Per-bucket values over a fixed window of buckets, oldest overwritten first."""

    def __init__(self, bucket_ms: int, buckets: int, *, mean: bool) -> None:
        self.bucket_ms = bucket_ms
        self.mean = mean
        self._starts = array("q", [-1]) * buckets
        self._values = array("d", [math.nan]) * buckets
        self._current = -1
        self._sum = 0.0
        self._count = 0

    def add(self, ts_ms: int, value: float) -> None:
        if not math.isfinite(value):
            return
        bucket = ts_ms - ts_ms % self.bucket_ms
        if bucket < self._current:
            return  # the clock stepped back: keep the series in time order
        if bucket != self._current:
            self._current, self._sum, self._count = bucket, 0.0, 0
        self._sum += value
        self._count += 1
        slot = (bucket // self.bucket_ms) % len(self._starts)
        self._starts[slot] = bucket
        self._values[slot] = self._sum / self._count if self.mean else value

    def points(self) -> list[tuple[int, float]]:
        """(bucket start ms, value) in time order, within the window of the newest bucket."""
        if self._current < 0:
            return []
        horizon = self._current - self.bucket_ms * len(self._starts)
        return sorted(
            (start, value)
            for start, value in zip(self._starts, self._values, strict=True)
            if start > horizon
        )


class History:
    """Every series the page draws; one per daemon."""

    def __init__(self, *, bucket_secs: float = BUCKET_S, window_secs: float = WINDOW_S) -> None:
        self.bucket_ms = max(1, round(bucket_secs * 1000))
        self.buckets = max(2, math.ceil(window_secs / bucket_secs))
        self.power: dict[str, Series] = {}
        self.counter: dict[str, Series] = {}
        #: meter -> the channel its counter series shows (and its unit is that channel's).
        self.counter_channel: dict[str, str] = {}
        self.backlog: dict[str, Series] = {}

    def _series(self, table: dict[str, Series], key: str, *, mean: bool) -> Series:
        series = table.get(key)
        if series is None:
            series = table[key] = Series(self.bucket_ms, self.buckets, mean=mean)
        return series

    def sample(self, health: Health, now_ms: int | None = None) -> None:
        """Take the current values and backlogs from Health."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        for meter, state in health.meters.items():
            values = state.last_values
            if POWER_CHANNEL in values:
                self._series(self.power, meter, mean=True).add(now, values[POWER_CHANNEL])
            channel = self.counter_channel.get(meter) or next(
                (name for name in COUNTER_PREFERENCE if name in values), None
            )
            if channel is not None and channel in values:
                self.counter_channel[meter] = channel
                self._series(self.counter, meter, mean=False).add(now, values[channel])
        for uplink, figures in health.uplinks.items():
            if figures.backlog_rows is not None:
                series = self._series(self.backlog, uplink, mean=False)
                series.add(now, float(figures.backlog_rows))


async def record_forever(
    history: History, health: Health, *, every_secs: float = SAMPLE_EVERY_S
) -> None:
    """Sample Health into `history` every `every_secs`, until cancelled."""
    while True:
        history.sample(health)
        await asyncio.sleep(every_secs)
