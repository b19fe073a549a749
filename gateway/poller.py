"""Reads every meter on its own wall-clock-aligned schedule and appends samples to the store.

One task per meter: a slow or dead meter only delays itself (and, on a shared RTU line, the
bus's turn-taking its driver owns), never a meter on another bus. A read that overruns the
next boundary skips the ticks it missed (counted, logged once) rather than queueing reads.
Samples are stamped with the scheduled boundary, in UTC, when the read started on time, so
uplinks that want interval boundaries (Wattics, EnerKey) see exact ones. A reader that knows
when its device measured (drivers.stamped: a DSMR gas reading) is stamped with that time
instead, and a reading no newer than its last one is not stored again.

An OFFLINE meter (OFFLINE_AFTER failed reads in a row) is retried on a slower schedule: after
max(interval, offline_retry_secs), doubling up to offline_retry_max_secs, always on one of its
interval boundaries. So a unit that is gone costs a shared RTU line one timeout per retry
instead of one per interval, and the first successful retry is an ordinary aligned sample
after which the normal schedule resumes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from drivers.base import MeterReader, MeterReadError
from drivers.stamped import StampedReader
from gateway.async_store import AsyncStore
from gateway.clock import Clock, SystemClock, next_boundary
from gateway.config import Meter
from gateway.health import Health, MeterHealth, MeterState
from gateway.sample import Sample
from gateway.store import StoreFull

log = logging.getLogger(__name__)

#: Consecutive failures after which a meter counts as offline rather than degraded.
OFFLINE_AFTER = 3
#: A read starting later than this after its boundary is stamped with its real start time.
ON_TIME_TOLERANCE_S = 1.0


class Poller:
    def __init__(
        self,
        meters: list[Meter],
        readers: dict[str, MeterReader],
        store: AsyncStore,
        health: Health,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.meters = meters
        self.readers = readers
        self.store = store
        self.health = health
        self.clock = clock or SystemClock()
        self._clock_warned = False

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for meter in self.meters:
                group.create_task(self._poll_forever(meter), name=f"poll-{meter.id}")

    async def read_once(self, meter: Meter) -> Sample | None:
        """One read now, stamped with the current time (for commands and commissioning)."""
        started = self.clock.time()
        return await self._read(meter, self.health.meter(meter.id), started)

    async def _poll_forever(self, meter: Meter) -> None:
        health = self.health.meter(meter.id)
        boundary = next_boundary(self.clock.time(), meter.interval)
        offline_retries = 0
        while True:
            await self.clock.sleep(boundary - self.clock.time())
            now = self.clock.time()
            if not self.clock.trusted():
                if not self._clock_warned:
                    log.warning("system clock is not trusted yet: not stamping samples")
                    self._clock_warned = True
                boundary = next_boundary(now, meter.interval)
                continue
            late = now - boundary
            stamp = boundary if late <= ON_TIME_TOLERANCE_S else now
            previous_ts_ms = health.last_read_ts_ms
            sample = await self._read(meter, health, stamp)
            if sample is not None and not self._repeated(meter, sample, previous_ts_ms):
                await self._store(sample, health)
            if health.state is MeterState.OFFLINE:
                delay = offline_retry_delay(meter, offline_retries)
                offline_retries += 1
                boundary = retry_boundary(boundary, delay, meter.interval, self.clock.time())
                health.next_attempt_ts_ms = round(boundary * 1000)
                log.debug("meter %s: offline, next attempt in %.1f s", meter.id, delay)
                continue
            offline_retries = 0
            health.next_attempt_ts_ms = None
            following = next_boundary(self.clock.time(), meter.interval)
            missed = round((following - boundary) / meter.interval) - 1
            if missed > 0:
                health.skipped_ticks += missed
                log.warning(
                    "meter %s: read overran its %gs interval, skipped %d tick(s)",
                    meter.id,
                    meter.interval,
                    missed,
                )
            boundary = following

    async def _read(self, meter: Meter, health: MeterHealth, stamp: float) -> Sample | None:
        reader = self.readers[meter.id]
        started = time.monotonic()
        # The driver bounds each request itself; this only guards against a driver bug.
        guard = max(meter.interval, 5 * (meter.timeout_secs or 3.0))
        device_ts_ms: int | None = None
        try:
            async with asyncio.timeout(guard):
                if isinstance(reader, StampedReader):
                    reading = await reader.read_stamped()
                    values, device_ts_ms = dict(reading.values), reading.ts_ms
                else:
                    values = await reader.read()
        except MeterReadError as exc:
            self._failed(meter, health, exc.kind, str(exc))
            return None
        except TimeoutError:
            self._failed(meter, health, "timeout", f"no answer within {guard:g}s")
            return None
        health.last_latency_s = time.monotonic() - started
        if not values or not all(math.isfinite(v) for v in values.values()):
            self._failed(meter, health, "garbage", "empty or non-finite values")
            return None
        if health.state is not MeterState.OK:
            if health.state is not MeterState.UNKNOWN:
                log.info(
                    "meter %s: reading again after %d error(s)", meter.id, health.consecutive_errors
                )
            health.state = MeterState.OK
        health.consecutive_errors = 0
        health.reads += 1
        health.last_values = dict(values)
        ts_ms = round(stamp * 1000) if device_ts_ms is None else device_ts_ms
        health.last_read_ts_ms = ts_ms
        return Sample(meter.id, ts_ms, values)

    def _repeated(self, meter: Meter, sample: Sample, previous_ts_ms: int | None) -> bool:
        """A device-stamped reading (drivers.stamped) no newer than the last one: the device
        has not measured again (a gas meter's hourly value polled every 5 min). Not stored."""
        return (
            isinstance(self.readers[meter.id], StampedReader)
            and previous_ts_ms is not None
            and sample.ts_ms <= previous_ts_ms
        )

    def _failed(self, meter: Meter, health: MeterHealth, kind: str, message: str) -> None:
        health.errors[kind] += 1
        health.consecutive_errors += 1
        health.last_error = f"{kind}: {message}"
        state = (
            MeterState.OFFLINE
            if health.consecutive_errors >= OFFLINE_AFTER
            else MeterState.DEGRADED
        )
        if state is not health.state:
            logger = log.error if state is MeterState.OFFLINE else log.warning
            logger("meter %s is %s: %s: %s", meter.id, state.value, kind, message)
            health.state = state

    async def _store(self, sample: Sample, health: MeterHealth) -> None:
        try:
            ids = await self.store.append([sample])
        except StoreFull as exc:
            if not self.health.store_full:
                self.health.alert("store", f"samples are being refused: {exc}")
            self.health.store_full = True
            health.errors["store_full"] += 1
            return
        if self.health.store_full:
            log.warning("store accepts samples again")
            self.health.store_full = False
        if ids[0] is None:
            health.refused_older += 1
            log.warning(
                "meter %s: sample at %s refused, not newer than the stored one",
                sample.meter,
                sample.ts.isoformat(),
            )


def offline_retry_delay(meter: Meter, retries: int) -> float:
    """Seconds before retry number `retries` (0 first) of an offline meter."""
    first = max(meter.interval, meter.offline_retry_secs)
    cap = max(first, meter.offline_retry_max_secs)
    return min(first * (1 << min(retries, 32)), cap)


def retry_boundary(failed: float, delay: float, interval: float, now: float) -> float:
    """The first interval boundary at least `delay` after the failed tick, and after `now`."""
    ticks = max(1, math.ceil(delay / interval - 1e-9))
    following = failed + ticks * interval
    return following if following > now else next_boundary(now, interval)
