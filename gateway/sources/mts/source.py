"""The Coherent MTS source: request a meter test on schedule, poll it, store what it read.

Per configured meter, one task loops: wait until the schedule says a test is due; record the
intent and send `test-request` (requestReference `<gateway id>/<meter id>/<UTC time>`); poll
`test-status` at growing intervals while it is PENDING; on SUCCESS or PARTIAL SUCCESS store the
survey and the register snapshot (gateway.sources.mts.ingest) through `store_new_samples`, so
overlapping surveys are stored once; on `ERROR: ...` report it. At start: `service-status`
(no token) as the health check, and `test-cancel` for tests still pending for meters that were
removed from config.

Invariants (with gateway.sources.mts.state):
1. A test's result leaves MTS's side only into the store: the pending entry is removed after
   the samples are committed. StoreFull, a crash or a stop in between means the result is
   fetched again (overlap-free: store_new_samples).
2. A test requested before a crash is found again: by its id, or by its requestReference
   through test-search (all pages). Only when MTS has no test with that reference is it
   requested again, with the same reference; extra tests found pending are cancelled.
3. Remote faults never end run(): 401/403 pause every meter (one alert, probe every
   auth_probe_secs); 429 waits MTS's retryAfter (for every meter: the limit is per token);
   network errors, 5xx and unreadable answers retry with jittered backoff and are counted; a
   400 is reported with MTS's `details` (health, log, alert) and that request is not repeated
   before the next slot.
4. The token and meter passwords are sent to MTS only; never logged or put into health.

Health: each meter's MeterHealth (`health.meter(id)`, published by the monitor): `state` ok
after a complete test, degraded after PARTIAL SUCCESS / a serial mismatch / a clock beyond
clock_offset_alert_secs, offline after `ERROR: ...`; `errors` by kind (test_error, rejected,
unreachable, rate_limited, auth, garbage, serial_mismatch, clock_offset, timeout, store_full);
`facts` holds serial_number, clock_offset_s, last_test_id, last_result.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from core.backoff import Backoff
from core.health import Health, MeterHealth, MeterState
from gateway.clock.clocks import Clock, SystemClock
from gateway.net.auth_gate import AuthGate
from gateway.net.policy import Outcome, Verdict
from gateway.net.session import SessionFactory
from gateway.sources.base import (
    Source,
    SourceConfig,
    SourceContext,
    SourceCounters,
    store_new_samples,
)
from gateway.sources.mts.catchup import CatchUp
from gateway.sources.mts.client import MtsClient, MtsError
from gateway.sources.mts.config import MtsConfig
from gateway.sources.mts.ingest import ingest
from gateway.sources.mts.parse import TestState, TestStatus, TestSummary, parse_search, parse_status
from gateway.sources.mts.schedule import last_slot_ms, next_slot_ms
from gateway.sources.mts.state import MtsState, PendingTest
from gateway.store.async_store import AsyncStore
from gateway.store.database import StoreFull
from gateway.timefmt import utc_iso8601

log = logging.getLogger(__name__)

NAME: Final = "mts"
#: test-search looks this far before our own request time (MTS's clock may be behind ours).
SEARCH_MARGIN_MS: Final = 3_600_000
#: A search never reads more pages than this (a server that keeps paging forever).
MAX_SEARCH_PAGES: Final = 1000


class MtsRuntime:
    """The `mts` source; see the module invariants."""

    name = NAME

    def __init__(
        self,
        config: MtsConfig,
        *,
        store: AsyncStore,
        health: Health,
        gateway_id: str,
        timezone: str,
        clock: Clock | None = None,
        session_factory: SessionFactory | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self._store = store
        self._health = health
        self._counter_check = SourceCounters(store, health)
        self._gateway = gateway_id
        self._tz = timezone
        self._clock: Clock = clock or SystemClock()
        self._rng = rng
        self.client = MtsClient(
            config.base_url,
            config.token,
            timeout_secs=config.timeout_secs,
            max_concurrency=config.max_concurrency,
            clock=self._clock,
            session_factory=session_factory,
            retry_after_max_secs=config.retry_after_max_secs,
            status_query_key=config.test_status_query_key,
            on_pause=self._rate_paused,
        )
        self.state = MtsState(store)
        self._gate = AuthGate()
        self._polls: dict[str, Backoff] = {}
        self._catchup = CatchUp(config.catchup_chunk_days, config.max_catchup_days)
        #: The last service-status answer (serviceVersion, status), or None if it failed.
        self.service: dict[str, str] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Every meter's loop until cancelled; closes the HTTP session on the way out."""
        try:
            for meter_id in self.config.meters:
                self._health.meter(meter_id)  # listed (state unknown) before the first test
            await self.state.load()
            await self._service_check()
            removed = sorted(
                (set(self.state.pending) | set(self.state.last_request)) - set(self.config.meters)
            )
            async with asyncio.TaskGroup() as group:
                for meter_id in self.config.meters:
                    group.create_task(self._meter_loop(meter_id), name=f"mts:{meter_id}")
                if removed:
                    group.create_task(self._cancel_removed(removed), name="mts:cancel-removed")
        finally:
            await self.client.aclose()

    async def _service_check(self) -> None:
        try:
            answer = await self.client.service_status()
        except MtsError as exc:
            self._health.alert(NAME, f"MTS service-status failed at start: {exc}")
            return
        version = str(answer.get("serviceVersion", "?"))
        status = str(answer.get("status", "?"))
        self.service = {"serviceVersion": version, "status": status}
        if status.upper() != "OK":
            self._health.alert(NAME, f"MTS {version} reports status {status!r}")
        else:
            log.info("mts: service %s status OK; %d meter(s)", version, len(self.config.meters))

    # -- one meter ----------------------------------------------------------------------------

    async def _meter_loop(self, meter_id: str) -> None:
        backoff = self._retry_backoff()
        health = self._health.meter(meter_id)
        while True:
            await self._gate.wait_turn(meter_id, self.config.auth_probe_secs, self._clock)
            try:
                await self._step(meter_id)
            except MtsError as exc:
                await self._clock.sleep(self._failed(meter_id, exc, backoff))
            except StoreFull as exc:
                if not self._health.store_full:
                    self._health.alert("store", f"samples are being refused: {exc}")
                self._health.store_full = True
                health.errors["store_full"] += 1
                await self._clock.sleep(backoff.next_delay())
            except Exception:  # a bug here must not stop the other meters or the daemon
                log.exception("mts: %s: unexpected failure; trying again later", meter_id)
                health.errors["internal"] += 1
                await self._clock.sleep(backoff.next_delay())
            else:
                backoff.reset()

    async def _step(self, meter_id: str) -> None:
        pending = self.state.pending.get(meter_id)
        if pending is None:
            await self._sleep_until_due(meter_id)
            await self._request(meter_id, None)
        elif pending.test_id is None:
            await self._find(meter_id, pending)
        else:
            await self._poll(meter_id, pending)
        self._answered(meter_id)

    def _now_ms(self) -> int:
        return int(self._clock.time() * 1000)

    async def _sleep_until_due(self, meter_id: str) -> None:
        schedule = self.config.meters[meter_id].schedule
        while True:
            now = self._now_ms()
            last = self.state.last_request.get(meter_id)
            if last is None or last < last_slot_ms(now, schedule, self._tz):
                return
            if self._catchup.due_now(meter_id):
                return  # the next catch-up chunk goes at once
            await self._clock.sleep((next_slot_ms(now, schedule, self._tz) - now) / 1000)

    # -- request ------------------------------------------------------------------------------

    def _reference(self, meter_id: str, now_ms: int) -> str:
        stamp = utc_iso8601(now_ms).replace("-", "").replace(":", "")
        return f"{self._gateway}/{meter_id}/{stamp}"

    def _params(self, meter_id: str, reference: str, now_ms: int) -> dict[str, object]:
        meter = self.config.meters[meter_id]
        newest = self._store.store.last_ts(meter_id)
        survey_date, survey_days = self._catchup.window(meter_id, now_ms, newest, meter.survey_days)
        params: dict[str, object] = {
            "requestReference": reference,
            "immediate": meter.immediate,
            "meterType": meter.meter_type,
            "remoteAddress": meter.remote_address,
            "surveyDays": survey_days,
        }
        optional = {
            "comsSettings": meter.coms_settings,
            "outstationAddress": meter.outstation_address,
            "serialNumber": meter.serial_number,
            "password": meter.password.get_secret_value() if meter.password else None,
            "surveyDate": survey_date,
        }
        params.update({name: value for name, value in optional.items() if value is not None})
        return params

    async def _request(self, meter_id: str, intent: PendingTest | None) -> None:
        now = self._now_ms()
        if intent is None:
            intent = PendingTest(self._reference(meter_id, now), now)
            await self.state.set_pending(meter_id, intent)  # before sending: invariant 1
        params = self._params(meter_id, intent.reference, now)
        try:
            test_id = await self.client.request_test(params)
        except MtsError as exc:
            if exc.outcome is not Outcome.REJECT:
                raise  # the request may have arrived: test-search decides (invariant 2)
            await self.state.set_pending(meter_id, None)
            self._answered()
            shrunk = self._catchup.refused(meter_id)
            if shrunk is not None:  # catchup invariant 3: a smaller test, at once
                log.warning("mts: %s: %s (%s)", meter_id, shrunk, _why(exc))
                return
            await self.state.mark_requested(meter_id, now)
            why = f"test-request refused: {_why(exc)}"
            if "surveyDate" in params and params["surveyDays"] == 1:
                why += f" (even one survey day, from {params['surveyDate']}: catch-up stopped)"
            self._report(meter_id, "rejected", why, alert=True)
            return
        await self.state.requested(meter_id, replace(intent, test_id=test_id), now)
        self._polls[meter_id] = self._poll_backoff()
        log.info("mts: %s: test %d requested (%s)", meter_id, test_id, intent.reference)

    async def _find(self, meter_id: str, intent: PendingTest) -> None:
        """An intent without a test id: a crash or a lost answer came between request and id."""
        try:
            matches = await self._search(intent)
        except MtsError as exc:
            if exc.outcome is not Outcome.REJECT:
                raise
            self._report(meter_id, "rejected", f"test-search refused: {_why(exc)}")
            matches = []  # cannot tell: request (again); a duplicate costs MTS a call, no data
        if not matches:
            log.info("mts: %s: %s is unknown to MTS; requesting it", meter_id, intent.reference)
            await self._request(meter_id, intent)
            return
        chosen = max(matches, key=lambda summary: summary.test_id)
        await self.state.requested(
            meter_id, replace(intent, test_id=chosen.test_id), intent.requested_ms
        )
        self._polls[meter_id] = self._poll_backoff()
        log.info(
            "mts: %s: found test %d of %s by test-search",
            meter_id,
            chosen.test_id,
            intent.reference,
        )
        for other in matches:
            if other is not chosen and other.state is TestState.PENDING:
                await self._cancel_quietly(other.test_id)

    async def _search(self, intent: PendingTest) -> list[TestSummary]:
        """Every test MTS holds with this exact requestReference, all pages read."""
        found: list[TestSummary] = []
        offset = 0
        for _ in range(MAX_SEARCH_PAGES):
            query = {
                "requestReference": intent.reference,
                "fromTime": utc_iso8601(intent.requested_ms - SEARCH_MARGIN_MS),
                "offset": str(offset),
            }
            if self.config.search_page_size is not None:
                query["limit"] = str(self.config.search_page_size)
            body = await self.client.search(query)
            page = parse_search(body)
            if page is None:
                raise _garbage("test-search", "no totalResultCount/results in the answer")
            found += [s for s in page.results if s.request_reference == intent.reference]
            offset += len(page.results)
            if not page.results or offset >= page.total:
                break
        return found

    # -- poll ---------------------------------------------------------------------------------

    def _poll_backoff(self) -> Backoff:
        """Deterministic doubling (no jitter): a pending test is polled, not stampeded."""
        return Backoff(self.config.poll_initial_secs, self.config.poll_max_secs, rng=lambda: 1.0)

    async def _poll(self, meter_id: str, pending: PendingTest) -> None:
        assert pending.test_id is not None
        waited = self._now_ms() - pending.requested_ms
        if waited > self.config.pending_timeout_secs * 1000:
            await self._cancel_quietly(pending.test_id)
            await self._done(meter_id)
            self._report(
                meter_id,
                "timeout",
                f"test {pending.test_id} still pending after {waited / 3_600_000:.1f} h: cancelled",
                alert=True,
            )
            return
        poll = self._polls.setdefault(meter_id, self._poll_backoff())
        await self._clock.sleep(poll.next_delay())
        try:
            body = await self.client.test_status(pending.test_id)
        except MtsError as exc:
            if exc.outcome is not Outcome.REJECT:
                raise
            await self._done(meter_id)
            self._answered()
            self._report(
                meter_id,
                "rejected",
                f"test-status of test {pending.test_id} refused: {_why(exc)}",
                alert=True,
            )
            return
        status = parse_status(body)
        if status is None or (status.test_id not in (None, pending.test_id)):
            raise _garbage("test-status", f"no result for test {pending.test_id} in the answer")
        if status.state is TestState.UNKNOWN:
            unknown = f"test {pending.test_id}: unknown result {status.result!r}"
            self._count_garbage(meter_id, unknown)
        elif status.state is TestState.ERROR:
            await self._done(meter_id)
            self._test_failed(meter_id, pending.test_id, status.error or "no details")
        elif status.state in (TestState.SUCCESS, TestState.PARTIAL):
            await self._ingest(meter_id, pending.test_id, status)
            await self._done(meter_id)
            self._catchup.completed(meter_id)

    async def _done(self, meter_id: str) -> None:
        self._polls.pop(meter_id, None)
        await self.state.set_pending(meter_id, None)

    # -- results ------------------------------------------------------------------------------

    async def _ingest(self, meter_id: str, test_id: int, status: TestStatus) -> None:
        meter = self.config.meters[meter_id]
        health = self._health.meter(meter_id)
        degraded = self._check_serial(meter_id, health, status)
        if degraded and self.config.on_serial_mismatch == "skip":
            health.state = MeterState.DEGRADED
            health.facts.update(last_test_id=test_id, last_result=status.result)
            return
        degraded = self._check_clock(meter_id, health, status) or degraded
        result = ingest(
            status,
            meter_id,
            self.config.registers_meter(meter_id),
            meter,
            period_secs=self.config.survey_period_secs,
        )
        problems = [*status.problems, *result.problems]
        stored = await store_new_samples(self._store, result.samples, self._counter_check)
        if self._health.store_full:
            log.warning("store accepts samples again")
            self._health.store_full = False
        for problem in problems:
            self._count_garbage(meter_id, f"test {test_id}: {problem}")
        partial = status.state is TestState.PARTIAL
        health.reads += 1
        health.consecutive_errors = 0
        if health.state is MeterState.OFFLINE:
            log.warning("mts: %s: meter read again (test %d)", meter_id, test_id)
        health.state = MeterState.DEGRADED if partial or degraded else MeterState.OK
        if partial:
            health.errors["partial"] += 1
            health.last_error = f"test {test_id}: PARTIAL SUCCESS"
        elif not degraded:
            health.last_error = None
        health.last_read_ts_ms = status.read_ms or (
            result.survey[-1].ts_ms if result.survey else None
        )
        values: dict[str, float] = {}
        if result.survey:
            values.update(result.survey[-1].values)
        if result.registers is not None:
            values.update(result.registers.values)
        if values:
            health.last_values = values
        health.refused_older += len(result.samples) - len(stored)
        health.facts.update(last_test_id=test_id, last_result=status.result)
        log.info(
            "mts: %s: test %d %s: %d survey period(s), %d register(s); %d new sample(s) stored",
            meter_id,
            test_id,
            status.result,
            len(result.survey),
            0 if result.registers is None else len(result.registers.values),
            len(stored),
        )

    def _check_serial(self, meter_id: str, health: MeterHealth, status: TestStatus) -> bool:
        """True on a serial-number mismatch (reported); a failed read is reported only."""
        expected = self.config.meters[meter_id].serial_number
        health.facts["serial_number"] = status.serial
        if status.serial_error is not None:
            mismatch = "match" in status.serial_error.lower()
            kind = "serial_mismatch" if mismatch else "serial_unread"
            self._report(meter_id, kind, f"serial number: {status.serial_error}", alert=mismatch)
            return mismatch
        if expected and status.serial and status.serial != expected.strip():
            self._report(
                meter_id,
                "serial_mismatch",
                f"serial number mismatch: configured {expected!r}, meter says {status.serial!r}",
                alert=True,
            )
            return True
        return False

    def _check_clock(self, meter_id: str, health: MeterHealth, status: TestStatus) -> bool:
        """True when the meter clock is off by more than clock_offset_alert_secs (reported)."""
        health.facts["clock_offset_s"] = status.clock_offset_s
        if status.meter_time_error is not None:
            health.facts["meter_time_error"] = status.meter_time_error
        offset = status.clock_offset_s
        if offset is not None and abs(offset) > self.config.clock_offset_alert_secs:
            self._report(
                meter_id,
                "clock_offset",
                f"meter clock is {abs(offset):g} s {'ahead' if offset > 0 else 'behind'}",
                alert=True,
            )
            return True
        return False

    def _test_failed(self, meter_id: str, test_id: int, error: str) -> None:
        health = self._health.meter(meter_id)
        was_offline = health.state is MeterState.OFFLINE
        health.facts.update(last_test_id=test_id, last_result=f"ERROR: {error}")
        message = f"test {test_id}: ERROR: {error}"
        self._report(meter_id, "test_error", message, alert=not was_offline)
        health.consecutive_errors += 1
        health.state = MeterState.OFFLINE

    # -- errors -------------------------------------------------------------------------------

    def _report(self, meter_id: str, kind: str, message: str, *, alert: bool = False) -> None:
        health = self._health.meter(meter_id)
        health.errors[kind] += 1
        health.last_error = message
        if alert:
            self._health.alert(f"{NAME}:{meter_id}", message)
        else:
            log.warning("mts: %s: %s", meter_id, message)

    def _count_garbage(self, meter_id: str, message: str) -> None:
        health = self._health.meter(meter_id)
        health.errors["garbage"] += 1
        health.last_error = message
        log.warning("mts: %s: %s", meter_id, message)

    def _failed(self, meter_id: str, exc: MtsError, backoff: Backoff) -> float:
        """Report a failed call; the delay before this meter tries again."""
        health = self._health.meter(meter_id)
        if exc.outcome is Outcome.AUTH:
            health.errors["auth"] += 1
            health.last_error = f"MTS refused the token: {exc}"
            if self._gate.close(meter_id):
                self._health.alert(
                    NAME,
                    f"MTS refused the API token ({exc}); every meter waits, probing every "
                    f"{self.config.auth_probe_secs:g} s: check sources.mts.token",
                )
            return 0.0
        if exc.garbage:
            self._count_garbage(meter_id, str(exc))
        elif exc.verdict.status == 429:
            health.errors["rate_limited"] += 1
            log.info("mts: %s: rate limited (%s)", meter_id, exc)
        elif exc.outcome is Outcome.REJECT:
            self._report(meter_id, "rejected", f"{exc.operation} refused: {_why(exc)}")
        else:
            if health.errors["unreachable"] == 0 or backoff.attempt == 0:
                log.warning("mts: %s: %s; retrying with backoff", meter_id, exc)
            health.errors["unreachable"] += 1
            health.last_error = str(exc)
        return backoff.next_delay(exc.verdict.retry_after_secs)

    def _retry_backoff(self) -> Backoff:
        config = self.config
        return Backoff(
            config.retry_initial_secs,
            config.retry_max_secs,
            max_retry_after_secs=config.retry_after_max_secs,
            rng=self._rng,
        )

    def _rate_paused(self, asked: float | None, waited: float) -> None:
        """A 429 holds every meter (the limit is per token): shown in each meter's state."""
        until = utc_iso8601(self._now_ms() + round(waited * 1000))
        for meter_id in self.config.meters:
            facts = self._health.meter(meter_id).facts
            facts["rate_limited_until"] = until
            facts["rate_limited_for_secs"] = round(waited, 3)
            facts["rate_limit_asked_secs"] = asked

    def _answered(self, meter_id: str | None = None) -> None:
        """A call went through: credentials work again if they were refused."""
        if meter_id is not None:
            self._health.meter(meter_id).facts.pop("rate_limited_until", None)
        if self._gate.reopen():
            log.warning("mts: MTS accepts the token again; meters resume")

    # -- removed meters -----------------------------------------------------------------------

    async def _cancel_removed(self, meters: list[str]) -> None:
        """Cancel the tests of meters no longer configured, then forget them (retried)."""
        backoff = self._retry_backoff()
        left = list(meters)
        while left:
            meter_id = left[0]
            try:
                await self._cancel_removed_meter(meter_id)
            except MtsError as exc:
                log.warning("mts: cancelling the test of removed meter %s: %s", meter_id, exc)
                if exc.outcome is Outcome.AUTH:
                    await self._clock.sleep(self.config.auth_probe_secs)
                else:
                    await self._clock.sleep(backoff.next_delay(exc.verdict.retry_after_secs))
                continue
            backoff.reset()
            left.pop(0)

    async def _cancel_removed_meter(self, meter_id: str) -> None:
        pending = self.state.pending.get(meter_id)
        if pending is not None:
            ids = [pending.test_id] if pending.test_id is not None else []
            if not ids:
                found = await self._search(pending)
                ids = [s.test_id for s in found if s.state is TestState.PENDING]
            for test_id in ids:
                try:
                    await self.client.cancel(test_id)
                except MtsError as exc:
                    if exc.outcome is not Outcome.REJECT:
                        raise
                    log.info("mts: test %d of removed meter %s: %s", test_id, meter_id, _why(exc))
                else:
                    log.info("mts: cancelled test %d of removed meter %s", test_id, meter_id)
        await self.state.forget(meter_id)

    async def _cancel_quietly(self, test_id: int) -> None:
        """Best effort: a test left running costs MTS a call, not us data."""
        try:
            await self.client.cancel(test_id)
        except MtsError as exc:
            log.info("mts: cancelling test %d: %s", test_id, exc)
        else:
            log.info("mts: cancelled test %d", test_id)


def _why(exc: MtsError) -> str:
    return exc.details or exc.verdict.detail


def _garbage(operation: str, why: str) -> MtsError:
    return MtsError(operation, Verdict(Outcome.RETRY, 200, None, why), why)


def build_source(section: SourceConfig, context: SourceContext) -> Source:
    """Registered for `sources.mts` (gateway.sources.mts.config)."""
    assert isinstance(section, MtsConfig)
    config = context.config
    return MtsRuntime(
        section,
        store=context.store,
        health=context.health,
        gateway_id=config.gateway.id,
        timezone=config.gateway.timezone,
        clock=context.clock,
    )
