"""One Locus component feeding one meter id: find it, check its fields, poll, backfill.

Invariants:
- Samples reach the store in time order, window after window; the position (`next_start`,
  where the next interval begins) and the interval counters move only after a window is
  stored, so a failure anywhere repeats the same window, never skips it.
- A component whose fields all offer `gran=latest` (dataavailable) is polled with it: when
  that point is exactly the next interval and complete it is stored as it is; when Locus is
  further ahead (after an outage, or at start with older data in the store) the gap is
  fetched at the meter's granularity in windows inside the span limit. A component without
  `latest` (the document's own example has none) is polled by interval: from the position to
  now, in such windows. An interval still in progress is never stored (its values would change).
- The position never moves over an interval without data that may still be uploaded (one
  that began within `settle_secs`): reading holds at it and asks again each poll, and nothing
  after it is stored meanwhile (the store keeps time order; a late upload then lands in place
  and the interval counter stays whole). An older empty interval is passed, counted
  (`facts.intervals_missing`) and alerted: its energy is missing from the counter.
- A remote fault is counted in this meter's health (ok / degraded / offline like a polled
  meter) and retried with backoff; a configuration fault (no such component or field) is
  alerted and checked again every `config_recheck_secs`. Nothing here ends the daemon.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from core.backoff import Backoff
from core.health import Health, MeterState
from gateway.clock.clocks import Clock, next_boundary
from gateway.sources.base import SourceCounters, StoreFull, store_new_samples
from gateway.sources.locus.auth import LocusApiError
from gateway.sources.locus.client import LocusClient
from gateway.sources.locus.config import LocusConfig, LocusMeterConfig
from gateway.sources.locus.plan import (
    DAY_MS,
    ceil_to,
    floor_to,
    lifetime_segments,
    locus_time,
    windows,
)
from gateway.sources.locus.samples import (
    FieldPlan,
    FieldProblem,
    build_samples,
    interval_sums,
    offers_latest,
    plan_fields,
    present_intervals,
)
from gateway.store.async_store import AsyncStore

log = logging.getLogger(__name__)

#: Errors that a human must fix in the config (or in Locus): alerted, not retried quickly.
#: "rejected" (a 400 on a data call: a granularity or field Locus will not give for this
#: component) is one: asked again after each `config_recheck_secs` with dataavailable first.
CONFIG_KINDS = frozenset({"config", "not_found", "forbidden", "rejected"})


class ConfigProblem(Exception):
    pass


class ClockUntrusted(Exception):
    pass


class LocusMeterWorker:
    def __init__(
        self,
        meter_id: str,
        meter: LocusMeterConfig,
        section: LocusConfig,
        *,
        client: LocusClient,
        store: AsyncStore,
        health: Health,
        clock: Clock,
    ) -> None:
        self.meter_id = meter_id
        self.meter = meter
        self.section = section
        self.client = client
        self.store = store
        self.health = health
        self.counter_check = SourceCounters(store, health)
        self.clock = clock
        self.step_ms = meter.granularity_secs * 1000
        self.window_ms = section.window_secs(meter) * 1000
        self.component_id: int | None = meter.component_id
        self.plans: list[FieldPlan] | None = None
        self.use_latest = True
        self.settle_ms = round(section.settle_secs * 1000)
        self.intervals_missing = 0
        self.next_start: int | None = None
        self.counters: dict[str, float] = {}
        self._alerted: str | None = None
        self._auth_alerted = False

    # -- schedule -------------------------------------------------------------------------------

    async def run(self) -> None:
        backoff = Backoff(self.section.retry_initial_secs, self.section.retry_max_secs)
        while True:
            started = time.monotonic()
            try:
                if self.plans is None:
                    await self._prepare()
                await self._poll()
            except ClockUntrusted as exc:
                self._failed("clock", str(exc))
                delay = self.meter.interval_secs
            except ConfigProblem as exc:
                self._config_problem(str(exc))
                delay = self.section.config_recheck_secs
            except LocusApiError as exc:
                if exc.kind in CONFIG_KINDS:
                    self.plans = None  # look the component up again next time
                    self._config_problem(str(exc), kind=exc.kind)
                    delay = self.section.config_recheck_secs
                else:
                    self._failed(exc.kind, str(exc))
                    if exc.kind == "auth":
                        if not self._auth_alerted:
                            self._auth_alerted = True
                            self.health.alert(
                                f"locus meter {self.meter_id}", f"credentials refused: {exc}"
                            )
                        delay = self.section.auth_probe_secs
                    else:
                        delay = backoff.next_delay(exc.retry_after)
            except StoreFull as exc:
                self.health.meter(self.meter_id).errors["store_full"] += 1
                if not self.health.store_full:
                    self.health.alert("store", f"samples are being refused: {exc}")
                self.health.store_full = True
                delay = backoff.next_delay()
            except Exception as exc:  # a bug must not end the daemon: count, log, retry
                log.exception("locus meter %s: unexpected error", self.meter_id)
                self._failed("internal", f"{type(exc).__name__}: {exc}")
                delay = backoff.next_delay()
            else:
                backoff.reset()
                self._auth_alerted = False
                self._succeeded(time.monotonic() - started)
                now = self.clock.time()
                delay = next_boundary(now, self.meter.interval_secs) - now
            await self.clock.sleep(delay)

    # -- start: component, fields, position ---------------------------------------------------

    async def _prepare(self) -> None:
        if self.component_id is None:
            self.component_id = await self._find_component()
        available = await self.client.get(f"/v3/components/{self.component_id}/dataavailable")
        try:
            self.plans = plan_fields(self.meter, available)
        except FieldProblem as exc:
            raise ConfigProblem(f"component {self.component_id}: {exc}") from exc
        self.use_latest = offers_latest(self.plans, available)
        if not self.use_latest:
            log.info(
                "locus meter %s: component %s offers no `latest`: polled by %s interval",
                self.meter_id,
                self.component_id,
                self.meter.granularity,
            )
        if self._alerted is not None:
            log.info("locus meter %s: configuration problem resolved", self.meter_id)
            self._alerted = None

    async def _find_component(self) -> int:
        node_id = self.meter.node_id
        answer = await self.client.get(
            f"/v3/partners/{self.section.partner_id}/components", {"nodeId": str(node_id)}
        )
        found = {
            c["id"]
            for c in answer.get("components") or []
            if isinstance(c, dict) and c.get("nodeId") == node_id and isinstance(c.get("id"), int)
        }
        if len(found) != 1:
            what = "no component" if not found else f"{len(found)} components"
            raise ConfigProblem(
                f"{what} with node id {node_id!r} for partner {self.section.partner_id}"
            )
        (component,) = found
        log.info("locus meter %s: node %s is component %d", self.meter_id, node_id, component)
        return int(component)

    async def _position(self, now_ms: int) -> None:
        """Where to go on from: the newest stored sample (its interval's end), counters from it."""
        last = self.store.store.last_ts(self.meter_id)
        earliest = ceil_to(now_ms - int(self.section.backfill_max_days * DAY_MS), self.step_ms)
        start = floor_to(now_ms, DAY_MS) if last is None else ceil_to(last, self.step_ms)
        if start < earliest:
            if last is not None:
                log.warning(
                    "locus meter %s: newest sample is older than backfill_max_days; "
                    "intervals before %s are not fetched",
                    self.meter_id,
                    locus_time(earliest),
                )
            start = earliest
        counters: dict[str, float] = {}
        skipped = last is not None and start != ceil_to(last, self.step_ms)
        # After a skipped span a lifetime baseline is asked again (the skipped energy is then
        # in it); with `zero` the counter goes on from the stored value without that energy.
        if last is not None and not (skipped and self.section.counter_baseline == "lifetime"):
            for plan in self._interval_plans():
                stored = await self.store.find_sample(
                    self.meter_id,
                    0,
                    last,
                    channel=plan.channel,
                    last=True,
                )
                if stored is not None:
                    counters[plan.channel] = float(stored.sample.values[plan.channel])
        missing = [p for p in self._interval_plans() if p.channel not in counters]
        if missing:
            counters.update(await self._baseline(missing, start))
        self.next_start, self.counters = start, counters
        log.info("locus meter %s: reading from %s UTC", self.meter_id, locus_time(start))

    async def _baseline(self, plans: list[FieldPlan], until_ms: int) -> dict[str, float]:
        """Lifetime energy up to `until_ms` of the interval fields, or zero."""
        sums = {plan.channel: 0.0 for plan in plans}
        if self.section.counter_baseline == "zero":
            return sums
        fields = ",".join(plan.short_name for plan in plans)
        segments = lifetime_segments(self.section.lifetime_since, until_ms, self.meter.granularity)
        for segment in segments:
            objects = await self._data(
                {
                    "fields": fields,
                    "gran": segment.gran,
                    "start": locus_time(segment.start_ms),
                    "end": locus_time(segment.end_ms),
                }
            )
            for channel, value in interval_sums(
                objects, plans, segment.start_ms, segment.end_ms
            ).items():
                sums[channel] += value
        log.info(
            "locus meter %s: counters start at the lifetime energy (%s)",
            self.meter_id,
            ", ".join(f"{c} {v:.0f} Wh" for c, v in sums.items()),
        )
        return sums

    def _interval_plans(self) -> list[FieldPlan]:
        return [plan for plan in self.plans or [] if plan.kind == "interval"]

    # -- polling and backfill -------------------------------------------------------------------

    async def _data(self, params: dict[str, str]) -> list[Any]:
        assert self.plans is not None
        query = {"fields": ",".join(p.short_name for p in self.plans), "tz": "UTC", **params}
        answer = await self.client.get(f"/v3/components/{self.component_id}/data", query)
        data = answer.get("data")
        if not isinstance(data, list):
            raise LocusApiError("garbage", f"component {self.component_id}: no data list")
        return data

    async def _poll(self) -> None:
        if not self.clock.trusted():
            # "now" decides which intervals are complete and where a first start begins.
            raise ClockUntrusted("the system clock is not synchronised yet")
        now_ms = int(self.clock.time() * 1000)
        if self.next_start is None:
            await self._position(now_ms)
        assert self.next_start is not None and self.plans is not None
        start = self.next_start
        target = floor_to(now_ms, self.step_ms)
        if self.use_latest:
            latest = await self._data({"gran": "latest"})
            stamps = present_intervals(latest, self.plans)
            if not stamps:
                return  # the component has no data (yet)
            newest = max(stamps)
            target = min(target, floor_to(newest, self.step_ms) + self.step_ms)
            if target <= start:
                return
            if newest == start and start + self.step_ms == target:
                await self._ingest(latest, start, target, now_ms)
                return
            log.info(
                "locus meter %s: backfilling %s to %s UTC (%s)",
                self.meter_id,
                locus_time(start),
                locus_time(target),
                self.meter.granularity,
            )
        for window_start, window_end in windows(start, target, self.window_ms):
            objects = await self._data(
                {
                    "gran": self.meter.granularity,
                    "start": locus_time(window_start),
                    "end": locus_time(window_end),
                }
            )
            if not await self._ingest(objects, window_start, window_end, now_ms):
                return  # held at an interval that may still be uploaded

    async def _ingest(self, objects: list[Any], start_ms: int, end_ms: int, now_ms: int) -> bool:
        """Store the window's intervals up to the first one without data that may still come
        (module invariants); False when held there."""
        assert self.plans is not None
        present = present_intervals(objects, self.plans)
        missing = [ts for ts in range(start_ms, end_ms - self.step_ms + 1, self.step_ms)]
        missing = [ts for ts in missing if ts not in present]
        hold = next((ts for ts in missing if ts >= now_ms - self.settle_ms), None)
        cut = end_ms if hold is None else hold
        built = build_samples(
            self.meter_id,
            objects,
            self.plans,
            counters=self.counters,
            step_ms=self.step_ms,
            start_ms=start_ms,
            end_ms=cut,
        )
        stored = await store_new_samples(self.store, built.samples, self.counter_check)
        if self.health.store_full:
            log.warning("store accepts samples again")
            self.health.store_full = False
        self.counters, self.next_start = built.counters, cut
        self._missing([ts for ts in missing if ts < cut], hold)
        health = self.health.meter(self.meter_id)
        if built.negative:
            health.errors["negative_energy"] += built.negative
        if stored:
            health.last_values = dict(stored[-1].values)
            health.last_read_ts_ms = stored[-1].ts_ms
        return hold is None

    def _missing(self, passed: list[int], hold: int | None) -> None:
        """Intervals passed without data (counted, alerted) and where reading holds."""
        facts = self.health.meter(self.meter_id).facts
        if hold is None:
            facts.pop("waiting_for_interval", None)
        else:
            facts["waiting_for_interval"] = locus_time(hold)
        if not passed:
            return
        self.intervals_missing += len(passed)
        facts["intervals_missing"] = self.intervals_missing
        self.health.alert(
            f"locus meter {self.meter_id}",
            f"no data for {len(passed)} interval(s) {locus_time(passed[0])} .. "
            f"{locus_time(passed[-1])} UTC, older than settle_secs: passed; the counter lacks "
            "their energy",
        )

    # -- health ---------------------------------------------------------------------------------

    def _succeeded(self, latency: float) -> None:
        health = self.health.meter(self.meter_id)
        health.read_succeeded(what="locus meter")
        health.last_latency_s = latency

    def _failed(self, kind: str, message: str) -> None:
        self.health.meter(self.meter_id).read_failed(kind, message, what="locus meter")

    def _config_problem(self, message: str, kind: str = "config") -> None:
        health = self.health.meter(self.meter_id)
        health.errors[kind] += 1
        health.consecutive_errors += 1
        health.last_error = f"config: {message}"
        health.state = MeterState.OFFLINE
        if self._alerted != message:
            self._alerted = message
            self.health.alert(f"locus meter {self.meter_id}", message)
