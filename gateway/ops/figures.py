"""What only the store knows, measured beside the data path: size, and per uplink stream the
backlog, its oldest sample, dead letters and how fast the cursor moves (the drain ETA).

Invariants:
- Measured through a StoreReader (gateway.store.reader) on a thread of its own, never on the
  store's writer thread: a count over a days-long backlog delays no append and no cursor.
- Measuring takes at most ~`MAX_DUTY` of the time: after a measurement that took d seconds
  the next waits at least d / MAX_DUTY (a huge backlog is measured less often, not slower).
- Rates come from the last `RATE_WINDOW_S` of measurements only; `passed_total` (samples a
  cursor moved past since start) only grows.
- The backlog is what is not delivered yet: counted from the later of the stored cursor and
  the position the uplink has acknowledged in memory (`acknowledged()`, Wattics' group
  commits lag by up to commit_every_secs), so a sample sent and acknowledged but not yet
  committed is not shown as waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from core.health import Health
from gateway.clock.sync import kernel_synchronized
from gateway.store.reader import StoreReader
from gateway.uplinks.base import Uplink

#: Delivery and drain rates are taken over this much of the recent past.
RATE_WINDOW_S = 300.0
#: ... and need measurements at least this far apart.
MIN_RATE_SPAN_S = 5.0
#: Share of the time measuring may take.
MAX_DUTY = 0.05
#: Default measurement period (the MQTT publish interval when shorter).
MEASURE_EVERY_S = 10.0


@dataclass
class StreamFigures:
    """One uplink stream as the store shows it."""

    uplink: str
    stream: str
    meter: str
    backlog_rows: int = 0
    oldest_undelivered_ts_ms: int | None = None
    dead_letters: int = 0
    #: Samples the cursor moved past (delivered or parked) since the daemon started.
    passed_total: int = 0
    position: int | None = None
    #: (monotonic s, passed_total, backlog_rows) of recent measurements.
    points: deque[tuple[float, int, int]] = field(default_factory=deque)

    def note(self, now: float) -> None:
        self.points.append((now, self.passed_total, self.backlog_rows))
        while len(self.points) > 2 and now - self.points[1][0] >= RATE_WINDOW_S:
            self.points.popleft()

    def _span(self) -> tuple[float, int, int] | None:
        if len(self.points) < 2:
            return None
        then, now = self.points[0], self.points[-1]
        elapsed = now[0] - then[0]
        if elapsed < MIN_RATE_SPAN_S:
            return None
        return elapsed, now[1] - then[1], then[2] - now[2]

    @property
    def delivery_per_s(self) -> float | None:
        """Samples passed per second, recently (None until measured long enough)."""
        span = self._span()
        return None if span is None else span[1] / span[0]

    @property
    def drain_per_s(self) -> float | None:
        """Net backlog shrinkage per second (negative: it grows)."""
        span = self._span()
        return None if span is None else span[2] / span[0]

    @property
    def eta_s(self) -> float | None:
        """Seconds until the backlog is gone at the recent net rate: 0 when there is none,
        None when it is not shrinking (or not measured long enough)."""
        if self.backlog_rows == 0:
            return 0.0
        drain = self.drain_per_s
        if drain is None or drain <= 0:
            return None
        return self.backlog_rows / drain


@dataclass(frozen=True, slots=True)
class _Measured:
    used_bytes: int
    cursors: dict[tuple[str, str], tuple[str, int]]
    backlogs: dict[tuple[str, str], tuple[int, int | None, int]]
    dead: dict[tuple[str, str], int]


class StoreFigures:
    """The latest figures of the store and every configured stream (one per daemon)."""

    def __init__(
        self,
        path: str | Path,
        streams: Mapping[str, Mapping[str, str]],
        budget: int | None,
        acknowledged: Callable[[], Mapping[tuple[str, str], int]] | None = None,
    ) -> None:
        self.path = Path(path)
        self._acknowledged = acknowledged
        self.budget_bytes = budget
        self.store_bytes: int | None = None
        self.measured_ms: int | None = None
        self.last_duration_s: float | None = None
        self.streams: dict[tuple[str, str], StreamFigures] = {
            (uplink, stream): StreamFigures(uplink, stream, meter)
            for uplink, pairs in streams.items()
            for stream, meter in pairs.items()
        }

    def of_uplink(self, uplink: str) -> list[StreamFigures]:
        return [figures for (name, _), figures in self.streams.items() if name == uplink]

    async def measure_forever(
        self,
        health: Health,
        *,
        every_secs: float = MEASURE_EVERY_S,
        clock_trusted: Callable[[], bool] | None = None,
    ) -> None:
        """Measure every `every_secs` (slower when measuring is slow) until cancelled, and put
        the per-uplink totals in Health (what MQTT state shows)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="figures")
        reader: StoreReader | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                started = time.monotonic()
                if reader is None or not reader.writer_running:
                    if reader is not None:
                        reader.close()
                    reader = await loop.run_in_executor(executor, StoreReader, self.path)
                acked = dict(self._acknowledged()) if self._acknowledged is not None else {}
                measured = await loop.run_in_executor(
                    executor, _measure, reader, self._positions(), acked
                )
                duration = time.monotonic() - started
                self._apply(measured, time.monotonic())
                self.last_duration_s = duration
                self._fill(health)
                if clock_trusted is not None:
                    health.clock_trusted = clock_trusted()
                health.clock_synchronized = kernel_synchronized()
                await asyncio.sleep(max(every_secs, duration / MAX_DUTY))
        finally:
            if reader is not None:
                executor.submit(reader.close)
            executor.shutdown(wait=True)

    def _positions(self) -> dict[tuple[str, str], tuple[str, int | None]]:
        return {key: (f.meter, f.position) for key, f in self.streams.items()}

    def _apply(self, measured: _Measured, now: float) -> None:
        self.store_bytes = measured.used_bytes
        self.measured_ms = int(time.time() * 1000)
        for key, figures in self.streams.items():
            cursor = measured.cursors.get(key)
            if cursor is not None:
                figures.meter = cursor[0]
            rows, oldest, passed = measured.backlogs.get(key, (0, None, 0))
            if figures.position is not None:
                figures.passed_total += passed
            figures.position = cursor[1] if cursor is not None else figures.position
            figures.backlog_rows, figures.oldest_undelivered_ts_ms = rows, oldest
            figures.dead_letters = measured.dead.get(key, 0)
            figures.note(now)

    def _fill(self, health: Health) -> None:
        health.store_bytes = self.store_bytes
        health.store_budget_bytes = self.budget_bytes
        for uplink in {name for name, _ in self.streams}:
            streams = self.of_uplink(uplink)
            oldest = [s.oldest_undelivered_ts_ms for s in streams]
            known = [ts for ts in oldest if ts is not None]
            state = health.uplink(uplink)
            state.backlog_rows = sum(s.backlog_rows for s in streams)
            state.oldest_undelivered_ts_ms = min(known) if known else None
            state.dead_letters = sum(s.dead_letters for s in streams)


def _measure(
    reader: StoreReader,
    positions: Mapping[tuple[str, str], tuple[str, int | None]],
    acked: Mapping[tuple[str, str], int],
) -> _Measured:
    """One consistent read of everything (on the figures thread); a stream's position is
    the later of its stored cursor and what its uplink acknowledged in memory."""
    with reader.snapshot():
        cursors = {
            (c.uplink, c.stream): (c.meter, max(c.position, acked.get((c.uplink, c.stream), 0)))
            for c in reader.cursors()
        }
        backlogs: dict[tuple[str, str], tuple[int, int | None, int]] = {}
        for key, (_, before) in positions.items():
            cursor = cursors.get(key)
            if cursor is None:  # not registered yet: the uplink is starting
                continue
            meter, position = cursor
            backlog = reader.backlog(meter, position)
            passed = 0 if before is None else reader.passed(meter, before, position)
            backlogs[key] = (backlog.rows, backlog.oldest_ts_ms, passed)
        return _Measured(reader.used_bytes(), cursors, backlogs, reader.dead_letters())


def uplink_streams(uplinks: Sequence[Uplink]) -> dict[str, dict[str, str]]:
    """uplink name -> its streams (stream -> meter), from built uplinks."""
    return {uplink.name: dict(uplink.streams()) for uplink in uplinks}


def acknowledged_positions(
    uplinks: Sequence[Uplink],
) -> Callable[[], dict[tuple[str, str], int]]:
    """(uplink, stream) -> the position each uplink has acknowledged in memory, for uplinks
    that commit their cursors in groups (an `acknowledged()` method; others: the cursor)."""

    def positions() -> dict[tuple[str, str], int]:
        found: dict[tuple[str, str], int] = {}
        for uplink in uplinks:
            acknowledged = getattr(uplink, "acknowledged", None)
            if callable(acknowledged):
                for stream, position in acknowledged().items():
                    found[(uplink.name, stream)] = position
        return found

    return positions
