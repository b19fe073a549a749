"""Reads every meter on its own wall-clock-aligned schedule and appends samples to the store.

One task per meter: a slow or dead meter only delays itself (and, on a shared RTU line, the
bus's turn-taking its driver owns), never a meter on another bus. A read that overruns the
next boundary skips the ticks it missed (counted, logged once) rather than queueing reads.
Samples are stamped with the scheduled boundary, in UTC, when the read started on time, so
uplinks that want interval boundaries (Wattics, EnerKey) see exact ones.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from drivers.base import MeterReader, MeterReadError
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
            sample = await self._read(meter, health, stamp)
            if sample is not None:
                await self._store(sample, health)
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
        try:
            async with asyncio.timeout(guard):
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
        ts_ms = round(stamp * 1000)
        health.last_read_ts_ms = ts_ms
        return Sample(meter.id, ts_ms, values)

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
