"""Reads every meter on its own wall-clock-aligned schedule and appends samples to the store.

One task per meter: a slow or dead meter only delays itself (and, on a shared RTU line, the
bus's turn-taking its driver owns), never a meter on another bus. A read that overruns the
next boundary skips the ticks it missed (counted, logged once) rather than queueing reads.
Samples are stamped with the scheduled boundary, in UTC, when the read started on time (its
first request went out within `on_time_tolerance_secs` of the boundary; on a shared line a
read starts when the meters before it are done), so uplinks that want interval boundaries
(Wattics, EnerKey) see exact ones; a later read is stamped with its own start time and
counted (`late_reads`), never silently given the boundary. Overrunning reads log once when a
meter starts skipping ticks and once when it is back on schedule, counted in between.

Samples of the meters read at one boundary are stored in ONE commit (gateway.poll_batch):
committed once every read started for it has ended, or a short window after the first one
finished, so a slow meter holds up no other; each meter's task goes on only after its sample
is committed (commit before anything else sees it). A reader that knows
when its device measured (drivers.stamped: a DSMR gas reading) is stamped with that time
instead, and a reading no newer than its last one is not stored again.

An OFFLINE meter (OFFLINE_AFTER failed reads in a row) is retried on a slower schedule: after
max(interval, offline_retry_secs), doubling up to offline_retry_max_secs, always on one of its
interval boundaries. So a unit that is gone costs a shared RTU line one timeout per retry
instead of one per interval, and the first successful retry is an ordinary aligned sample
after which the normal schedule resumes.

Time integrity (gateway.clock.sync, gateway.clock.hold): while the clock is not trusted, meters
are read on the monotonic clock every interval and their readings HELD; once it is trusted they
are stamped `trusted_now - (monotonic_now - monotonic_at_read)` and stored in read order
before any newer sample. If it is not trusted within the hold bounds, they are stored flagged
`clock_unsynced` (never older than the meter's newest). A wall-clock step is noticed (wall vs
monotonic time): the schedule is re-planned at once, and while a step back leaves the clock
behind a meter's newest sample, that meter's samples are not offered to the store — counted in
health and alerted once per step, never one warning per sample.

Counter integrity (gateway.counters): each meter's counters are compared with its previous
sample; decreases and impossible rises are flagged on the sample and alerted with the numbers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping

from core.backoff import Backoff, no_jitter
from core.cancel import raise_if_cancelling
from core.flags import CLOCK_UNSYNCED
from core.health import Health, MeterHealth, MeterState
from core.sample import Sample
from drivers.base import MeterReader, MeterReadError
from drivers.config import MeterConfig
from drivers.stamped import StampedReader, read_with_time
from gateway.clock.clocks import Clock, SystemClock, next_boundary
from gateway.clock.hold import ClockHold, HeldReading, trusted_stamp_ms, unsynced_stamp_ms
from gateway.clock.sync import StepDetector, clock_for
from gateway.config.schema import Config
from gateway.counters import CounterGuard, report_counter_problems
from gateway.plausibility import PlausibilityGuard
from gateway.poll_batch import BoundaryBatches
from gateway.store.async_store import AsyncStore
from gateway.store.database import StoreFull

log = logging.getLogger(__name__)

#: Default of gateway.on_time_tolerance_secs: a read whose first request goes out later than
#: this after its boundary is stamped with its real start time.
ON_TIME_TOLERANCE_S = 0.25
#: Waking this much before a planned boundary means the clock stepped back: plan again.
EARLY_WAKE_S = 0.05
#: Defaults of gateway.clock_hold_max_secs / clock_hold_max_samples.
HOLD_MAX_SECS = 900.0
HOLD_MAX_SAMPLES = 5_000
_FAR_FUTURE_MS = 1 << 62


class Poller:
    def __init__(
        self,
        meters: list[MeterConfig],
        readers: dict[str, MeterReader],
        store: AsyncStore,
        health: Health,
        *,
        clock: Clock | None = None,
        hold_max_secs: float = HOLD_MAX_SECS,
        hold_max_samples: int = HOLD_MAX_SAMPLES,
        plausible_ranges: Mapping[str, tuple[float, float]] | None = None,
        on_time_tolerance_secs: float = ON_TIME_TOLERANCE_S,
    ) -> None:
        self.meters = meters
        self.readers = readers
        self.store = store
        self.health = health
        self.clock = clock or SystemClock()
        self._hold = ClockHold(hold_max_secs, hold_max_samples)
        self._steps = StepDetector()
        self._counters = {meter.id: CounterGuard(meter.id, meter.max_power_w) for meter in meters}
        self._plausible = PlausibilityGuard(plausible_ranges)
        #: Each meter's newest sample offered to the store (UTC ms): nothing older is offered.
        self._newest: dict[str, int] = {}
        #: Each meter's scheduled boundary not yet read and committed (UTC ms; None: not
        #: planned on the wall clock). A command read stamped at or after it is not stored.
        self._due_ms: dict[str, int | None] = {}
        #: Meters whose samples are being refused after a clock step back -> how many so far.
        self._refusing: dict[str, int] = {}
        self._loaded = False
        self._clock_warned = False
        self._tolerance_s = on_time_tolerance_secs
        self._batches = BoundaryBatches(self._commit)
        #: Meters skipping ticks now -> ticks skipped since they started (logged on recovery).
        self._skipping: dict[str, int] = {}
        check = getattr(self.clock, "check", None)
        describe = getattr(check, "describe", None)
        health.clock.check = describe() if callable(describe) else type(self.clock).__name__

    async def run(self) -> None:
        await self.load()
        async with asyncio.TaskGroup() as group:
            for meter in self.meters:
                group.create_task(self._poll_forever(meter), name=f"poll-{meter.id}")

    async def load(self) -> None:
        """Each meter's newest stored sample: order and counter checks go on across restarts."""
        if self._loaded:
            return
        for meter in self.meters:
            last = await self.store.find_sample(meter.id, 0, _FAR_FUTURE_MS, last=True)
            newest = self.store.last_ts(meter.id)
            if newest is not None:
                self._newest[meter.id] = newest
            if last is not None:
                self._counters[meter.id].seed(last.sample)
        self._loaded = True

    async def read_once(self, meter: MeterConfig) -> Sample | None:
        """One read now, stamped with the current time (for commands and commissioning);
        counter-checked like a polled sample."""
        health = self.health.meter(meter.id)
        reading = await self._read(meter, health)
        if reading is None:
            return None
        values, device_ts_ms = reading
        ts_ms = round(self.clock.time() * 1000) if device_ts_ms is None else device_ts_ms
        checked = self._plausible.check(Sample(meter.id, ts_ms, values), self.health)
        if checked is None:
            health.last_error = "implausible: no plausible value read"
            return None
        sample = checked
        newest = self._newest.get(meter.id)
        if (newest is None or ts_ms > newest) and not self.displaces(sample):
            sample = self._check_counters(sample)
            self._newest[meter.id] = ts_ms
        health.last_read_ts_ms = ts_ms
        return sample

    def displaces(self, sample: Sample) -> bool:
        """Whether storing `sample` (a command's read) would take the place of the scheduled
        sample still due: it is stamped at or after the boundary the meter's task waits for or
        is reading now, and the store refuses anything older than what it holds."""
        due = self._due_ms.get(sample.meter)
        return due is not None and sample.ts_ms >= due

    async def _poll_forever(self, meter: MeterConfig) -> None:
        health = self.health.meter(meter.id)
        clock = self.clock
        interval = meter.interval_secs
        #: Planned on the wall clock while it is trusted, else on the monotonic clock.
        plan_wall: float | None = None
        plan_mono = clock.monotonic()
        if clock.trusted():
            plan_wall = next_boundary(clock.time(), interval)
        offline_retry = offline_backoff(meter)
        while True:
            on_mono_plan = plan_wall is None
            # Until this boundary's sample is committed, nothing stamped at or after it is.
            self._due_ms[meter.id] = None if plan_wall is None else round(plan_wall * 1000)
            if plan_wall is not None:
                await clock.sleep(plan_wall - clock.time())
            else:
                await clock.sleep(plan_mono - clock.monotonic())
            wall, mono = clock.time(), clock.monotonic()
            stepped = self._observe_step(wall, mono)
            trusted = clock.trusted()
            self.health.clock_trusted = trusted
            await self._settle(trusted, wall, mono)
            if trusted and plan_wall is not None and wall < plan_wall - EARLY_WAKE_S:
                plan_wall = next_boundary(wall, interval)  # the clock stepped back: plan anew
                continue
            previous_ts_ms = health.last_read_ts_ms
            read_mono = clock.monotonic()
            batch = self._batches.join(plan_wall, interval) if trusted else None
            try:
                waited = time.monotonic()
                reading = await self._read(meter, health)
                raise_if_cancelling()  # a driver's library may have lost our cancel (core.cancel)
                sample: Sample | None = None
                if reading is not None:
                    values, device_ts_ms = reading
                    if device_ts_ms is not None:  # the device's own time: not ours to doubt
                        if not self._repeated(meter, device_ts_ms, previous_ts_ms):
                            sample = Sample(meter.id, device_ts_ms, values)
                    elif trusted:
                        started = wall + self._line_wait(meter, waited)
                        stamp = self._stamp(health, plan_wall, started)
                        sample = Sample(meter.id, round(stamp * 1000), values)
                    else:
                        await self._untrusted(HeldReading(meter.id, read_mono, values, interval))
            except BaseException:
                self._batches.leave(batch)
                raise
            if batch is not None:
                await self._batches.store(batch, sample)
            elif sample is not None:
                await self._commit([sample])
            if health.state is MeterState.OFFLINE:
                delay = offline_retry.next_delay()
                if trusted:
                    base = wall if plan_wall is None else plan_wall
                    plan_wall = retry_boundary(base, delay, interval, clock.time())
                    health.next_attempt_ts_ms = round(plan_wall * 1000)
                else:
                    plan_wall, plan_mono = None, mono + delay
                    health.next_attempt_ts_ms = None
                log.debug("meter %s: offline, next attempt in %.1f s", meter.id, delay)
                continue
            offline_retry.reset()
            health.next_attempt_ts_ms = None
            if trusted:
                following = next_boundary(clock.time(), interval)
                missed = (
                    0
                    if plan_wall is None or stepped
                    else round((following - plan_wall) / interval) - 1
                )
                plan_wall = following
            else:
                plan_wall = None
                plan_mono = (plan_mono if on_mono_plan else mono) + interval  # keep the grid
                now = clock.monotonic()
                missed = max(0, math.ceil((now - plan_mono) / interval))
                plan_mono += missed * interval
            self._count_skipped(meter, interval, missed)

    def _count_skipped(self, meter: MeterConfig, interval: float, missed: int) -> None:
        """One WARNING when a meter starts skipping ticks, one when it is back on schedule;
        counted (health.skipped_ticks) in between."""
        health = self.health.meter(meter.id)
        if missed > 0:
            health.skipped_ticks += missed
            if meter.id not in self._skipping:
                log.warning(
                    "meter %s: read overran its %gs interval, skipping ticks (counted in "
                    "skipped_ticks; next log when it keeps its schedule)",
                    meter.id,
                    interval,
                )
            self._skipping[meter.id] = self._skipping.get(meter.id, 0) + missed
        elif meter.id in self._skipping:
            log.warning(
                "meter %s: on schedule again after %d skipped tick(s)",
                meter.id,
                self._skipping.pop(meter.id),
            )

    def _line_wait(self, meter: MeterConfig, waited: float) -> float:
        """Seconds from the read's call to its first request (waiting for a shared line),
        where the reader tells (drivers.modbus.reader: `turn_started_mono`), else 0."""
        started = getattr(self.readers[meter.id], "turn_started_mono", None)
        return max(0.0, started - waited) if isinstance(started, float) else 0.0

    def _stamp(self, health: MeterHealth, boundary: float | None, started: float) -> float:
        """The boundary when the read started within the tolerance of it, else its start."""
        if boundary is None:
            health.last_lateness_s = None
            return started
        lateness = started - boundary
        health.last_lateness_s = round(lateness, 4)
        if lateness <= self._tolerance_s:
            return boundary
        health.late_reads += 1
        return started

    # -- the clock ---------------------------------------------------------------------------

    def _observe_step(self, wall: float, mono: float) -> float:
        """Notice a wall-clock step (any meter's task may be first); report it once."""
        step = self._steps.observe(wall, mono)
        if not step:
            return 0.0
        clock = self.health.clock
        clock.steps += 1
        clock.last_step_s = round(step, 3)
        if step < 0:
            self.health.alert(
                "clock",
                f"the system clock stepped back {-step:.1f} s: readings are not stored until "
                "it passes each meter's newest stored sample (counted as refused_clock_step)",
            )
        else:
            log.warning("the system clock stepped forward %.1f s", step)
        return step

    async def _settle(self, trusted: bool, wall: float, mono: float) -> None:
        """Release held readings once the clock is trusted; give up holding at its bounds."""
        hold = self._hold
        if trusted:
            if hold.gave_up:
                hold.gave_up = False
                log.warning("the system clock is trusted again: samples are stamped normally")
            self._clock_warned = False
            if len(hold):
                await self._release(wall, mono)
            return
        if not hold.gave_up and (reason := hold.exceeded(mono)) is not None:
            await self._give_up(reason, wall, mono)

    async def _untrusted(self, reading: HeldReading) -> None:
        if not self._clock_warned:
            log.warning(
                "the system clock is not trusted yet (%s): readings are held until it is, "
                "for at most %g s / %d readings",
                self.health.clock.check,
                self._hold.max_secs,
                self._hold.max_samples,
            )
            self._clock_warned = True
        if self._hold.gave_up:
            await self._store_unsynced([reading], self.clock.time(), self.clock.monotonic())
            return
        self._hold.add(reading)
        self.health.clock.held = len(self._hold)
        reason = self._hold.exceeded(self.clock.monotonic())
        if reason is not None:
            await self._give_up(reason, self.clock.time(), self.clock.monotonic())

    async def _release(self, wall: float, mono: float) -> None:
        """Stamp every held reading on the now trusted clock; store them in read order."""
        held = self._hold.take_all()
        self.health.clock.held = 0
        last: dict[str, int] = {}
        samples: list[Sample] = []
        for reading in held:
            ts_ms = trusted_stamp_ms(reading, wall, mono, ON_TIME_TOLERANCE_S)
            previous = last.get(reading.meter)
            if previous is not None and ts_ms <= previous:  # two reads on one boundary
                ts_ms = max(previous + 1, round((wall - (mono - reading.mono)) * 1000))
            last[reading.meter] = ts_ms
            samples.append(Sample(reading.meter, ts_ms, reading.values))
        self.health.clock.released += len(samples)
        log.warning(
            "the system clock is trusted: %d held reading(s) stamped and stored", len(samples)
        )
        await self._commit(samples)

    async def _give_up(self, reason: str, wall: float, mono: float) -> None:
        held = self._hold.take_all()
        self._hold.gave_up = True
        self.health.clock.held = 0
        self.health.alert(
            "clock",
            f"the system clock is still not trusted ({self.health.clock.check}) and {reason}: "
            f"{len(held)} held reading(s) stored flagged {CLOCK_UNSYNCED}, as will be every "
            "reading until it is (gateway.clock_check: none trusts any time after the "
            "build date)",
        )
        await self._store_unsynced(held, wall, mono)

    async def store_held_at_stop(self) -> int:
        """On a clean stop (polling already ended): what the hold still has is stored flagged
        `clock_unsynced` instead of vanishing with the process; returns how many."""
        held = self._hold.take_all()
        self.health.clock.held = 0
        if held:
            await self._store_unsynced(held, self.clock.time(), self.clock.monotonic())
            log.warning(
                "stopping while the system clock is not trusted: %d held reading(s) stored "
                "flagged %s",
                len(held),
                CLOCK_UNSYNCED,
            )
        return len(held)

    async def _store_unsynced(self, held: list[HeldReading], wall: float, mono: float) -> None:
        newest = dict(self._newest)
        samples: list[Sample] = []
        for reading in held:
            ts_ms = unsynced_stamp_ms(reading, wall, mono, newest.get(reading.meter))
            newest[reading.meter] = ts_ms
            samples.append(
                Sample(reading.meter, ts_ms, reading.values, frozenset({CLOCK_UNSYNCED}))
            )
        await self._commit(samples)

    # -- storing -----------------------------------------------------------------------------

    async def _commit(self, samples: list[Sample]) -> None:
        """Counter-check and store samples, in order; what a clock step put behind a meter's
        newest sample is counted, not offered to the store."""
        accepted: list[Sample] = []
        for offered in samples:
            newest = self._newest.get(offered.meter)
            if newest is not None and offered.ts_ms <= newest:
                self._refused_by_step(offered, newest)
                continue
            self._resumed(offered.meter)
            plausible = self._plausible.check(offered, self.health)
            if plausible is None:
                continue  # nothing a meter can measure was left in it
            sample = self._check_counters(plausible)
            self._newest[sample.meter] = sample.ts_ms
            self.health.meter(sample.meter).last_read_ts_ms = sample.ts_ms
            accepted.append(sample)
        if accepted:
            unsynced = sum(CLOCK_UNSYNCED in sample.flags for sample in accepted)
            self.health.clock.unsynced_stored += unsynced  # (taken back if the store is full)
            await self._append(accepted, unsynced)

    def _refused_by_step(self, sample: Sample, newest: int) -> None:
        health = self.health.meter(sample.meter)
        health.refused_clock_step += 1
        self.health.clock.refused_after_step += 1
        count = self._refusing.get(sample.meter, 0)
        self._refusing[sample.meter] = count + 1
        if count == 0:
            log.warning(
                "meter %s: reading at %s is not newer than the newest stored sample (%s): the "
                "clock is behind it; readings are counted, not stored, until it passes",
                sample.meter,
                sample.ts.isoformat(),
                Sample(sample.meter, newest, {}).ts.isoformat(),
            )

    def _resumed(self, meter: str) -> None:
        count = self._refusing.pop(meter, 0)
        if count:
            log.warning("meter %s: storing again after %d reading(s) not stored", meter, count)

    def _check_counters(self, sample: Sample) -> Sample:
        guard = self._counters.get(sample.meter)
        if guard is None:
            return sample
        sample, problems = guard.check(sample)
        report_counter_problems(self.health, sample, problems)
        return sample

    async def _append(self, samples: list[Sample], unsynced: int) -> None:
        try:
            ids = await self.store.append(samples)
        except StoreFull as exc:
            self.health.clock.unsynced_stored -= unsynced
            if not self.health.store_full:
                self.health.alert("store", f"samples are being refused: {exc}")
            self.health.store_full = True
            for sample in samples:
                self.health.meter(sample.meter).errors["store_full"] += 1
            return
        if self.health.store_full:
            log.warning("store accepts samples again")
            self.health.store_full = False
        for sample, sample_id in zip(samples, ids, strict=True):
            if sample_id is None:
                self.health.meter(sample.meter).refused_older += 1
                self.health.clock.unsynced_stored -= CLOCK_UNSYNCED in sample.flags
                log.warning(
                    "meter %s: sample at %s refused, not newer than the stored one",
                    sample.meter,
                    sample.ts.isoformat(),
                )

    # -- reading -----------------------------------------------------------------------------

    async def _read(
        self, meter: MeterConfig, health: MeterHealth
    ) -> tuple[dict[str, float], int | None] | None:
        """The meter's values and, for a device-stamped reader, its own time (UTC ms)."""
        reader = self.readers[meter.id]
        started = time.monotonic()
        # The driver bounds each request itself; this only guards against a driver bug.
        guard = max(meter.interval_secs, 5 * (meter.timeout_secs or 3.0))
        device_ts_ms: int | None = None
        try:
            async with asyncio.timeout(guard):
                values, device_ts_ms = await read_with_time(reader)
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
        health.read_succeeded()
        health.last_values = dict(values)
        return values, device_ts_ms

    def _repeated(self, meter: MeterConfig, ts_ms: int, previous_ts_ms: int | None) -> bool:
        """A device-stamped reading (drivers.stamped) no newer than the last one: the device
        has not measured again (a gas meter's hourly value polled every 5 min). Not stored."""
        return (
            isinstance(self.readers[meter.id], StampedReader)
            and previous_ts_ms is not None
            and ts_ms <= previous_ts_ms
        )

    def _failed(self, meter: MeterConfig, health: MeterHealth, kind: str, message: str) -> None:
        health.read_failed(kind, message)


def offline_backoff(meter: MeterConfig) -> Backoff:
    """Delays between retries of an offline meter: max(interval, offline_retry_secs), doubling
    up to offline_retry_max_secs. Not jittered: retries land on the meter's own boundaries
    (`retry_boundary`) and health shows when the next one is due."""
    first = max(meter.interval_secs, meter.offline_retry_secs)
    return Backoff(first, max(first, meter.offline_retry_max_secs), rng=no_jitter)


def retry_boundary(failed: float, delay: float, interval: float, now: float) -> float:
    """The first interval boundary at least `delay` after the failed tick, and after `now`."""
    ticks = max(1, math.ceil(delay / interval - 1e-9))
    following = failed + ticks * interval
    return following if following > now else next_boundary(now, interval)


def poller_for(
    config: Config, readers: dict[str, MeterReader], store: AsyncStore, health: Health
) -> Poller:
    """The daemon's poller: its clock check and hold bounds come from the `gateway:` section."""
    gateway = config.gateway
    return Poller(
        config.meters,
        readers,
        store,
        health,
        clock=clock_for(gateway.clock_check, gateway.clock_sync_file),
        hold_max_secs=gateway.clock_hold_max_secs,
        hold_max_samples=gateway.clock_hold_max_samples,
        plausible_ranges=gateway.plausible_ranges,
        on_time_tolerance_secs=gateway.on_time_tolerance_secs,
    )
