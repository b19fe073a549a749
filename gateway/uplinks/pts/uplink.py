"""MassCEC PTS uplink: one monthly production reading per system, inside the window, within the
quota, verified. A missed or rejected reading can forfeit a month's SRECs, so this uplink is an
accountant: few calls, each one checked before it may cost anything.

This module is the runtime: lifecycle, the schedule of passes and the manual actions (CLI,
MQTT), composing the parts that do the work:
- gateway.uplinks.pts.state       each system's state and the context the parts share
- gateway.uplinks.pts.systems     GetSystems: which systems are active
- gateway.uplinks.pts.samples     which stored sample is the reading; retention
- gateway.uplinks.pts.submission  check, claim quota, ARPostTest/ARPost, record
- gateway.uplinks.pts.followup    GetSubmissionStatus until Passed or Failed; retries
- gateway.uplinks.pts.missed      alerts about windows closing or closed without a pass
- gateway.uplinks.pts.status      the facts and the `pts status` report

Per system and reporting window (gateway.uplinks.pts.window has the window rule, in Eastern
time), one pass (`step`, every check_every_secs, idempotent) does, in order:
1. GetSystems at start and daily: a system that is unknown, inactive or has an `Error` is
   reported and never submitted.
2. From `submit_after_days` after the month end (default: the next day), choose the stored
   sample nearest to the month end inside the window (MeterValue in kWh, MeterDate Eastern).
   Before the first submission of a window, GetSubmissionStatus tells whether PTS already
   has one (a lost ledger, another tool): a Passed one ends the window for us.
3. Local checks against GetLastReading (not zero, above and not equal to the last accepted
   reading, energy ≤ capacity × hours × plausibility_factor; a sample flagged counter_reset or
   counter_jump is never submitted, and clock_unsynced samples are never chosen), then
   ARPostTest (validation, nothing saved) when test_before_submit; a test refusing only the
   date is repeated with the nearest reading after midnight (tests cost no quota). A reading
   failing is reported with its numbers for a human and NOT submitted (re-checked daily; a
   human can submit by CLI).
4. ARPost, then GetSubmissionStatus every status_poll_secs until Passed (1) or Failed (-1);
   status and ValidationNotes are recorded and published. A Failed reading is reported; it is
   retried automatically only when the notes name something the gateway can fix (the date,
   or a transient validation failure), once per window, and only while one failed submission
   stays in reserve for a human.
5. From missed_window_alert_hours before the close, a system without a Passed reading raises
   an alert (once); a window that closed without one is reported when it closes, and loudly,
   with the outage, when the gateway was not running across the whole window.

Invariants (each part states its own; the ledger statuses are in gateway.uplinks.pts.ledger):
- Nothing happens while the wall clock is untrusted (a Pi without RTC boots in the past: the
  window would be wrong).
- "Last one in wins": nothing is submitted automatically once a window has a Passed reading,
  nor while a submission is pending, nor after a failed or refused one (a human decides;
  automatic retries happen right after the failure).
- One pass or manual action at a time (the lock): the parts never race on a system.
- The subscription key is only ever sent in headers and bodies: never logged, stored or
  published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable
from typing import Any, Final

from core.backoff import Backoff
from core.config_base import UplinkConfig
from core.health import Health
from gateway.clock.clocks import Clock, SystemClock
from gateway.clock.wakeable import WakeableClock
from gateway.net.session import SessionFactory
from gateway.store.async_store import AsyncStore
from gateway.uplinks.pts.client import PtsCallError, PtsClient
from gateway.uplinks.pts.config import PtsConfig
from gateway.uplinks.pts.followup import FollowUp
from gateway.uplinks.pts.ledger import NEEDS_HUMAN, PENDING
from gateway.uplinks.pts.missed import MissedWindows
from gateway.uplinks.pts.samples import release_samples
from gateway.uplinks.pts.state import HOUR_MS, PtsContext, SystemState, has_passed
from gateway.uplinks.pts.status import Status
from gateway.uplinks.pts.submission import Submitter
from gateway.uplinks.pts.systems import check_systems
from gateway.uplinks.pts.window import Window, eastern, submit_at
from gateway.uplinks.registry import UplinkContext

log = logging.getLogger(__name__)

#: The heartbeat (last pass) is written at most this often: it dates an outage.
HEARTBEAT_EVERY_MS: Final = HOUR_MS


class PtsUplink:
    """Reports one monthly reading per configured PTS system; see the module invariants."""

    def __init__(
        self,
        config: PtsConfig,
        *,
        store: AsyncStore,
        health: Health,
        name: str = "pts",
        session_factory: SessionFactory | None = None,
        clock: Clock | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.config = config
        self._astore = store
        # The wait between passes ends early on flush().
        self._clock = WakeableClock(clock or SystemClock())
        self._client = PtsClient(
            config.api_root,
            config.subscription_key,
            timeout_secs=config.timeout_secs,
            query_method=config.query_method,
            session_factory=session_factory,
            now=self._clock.time,
        )
        self._systems = [
            SystemState(meter, system.fk_system, system) for meter, system in config.systems.items()
        ]
        self._by_fk = {system.fk: system for system in self._systems}
        self._ctx = PtsContext(name, config, store, health, self._client, self._systems)
        self._uplink_health = self._ctx.uplink_health
        self._submitter = Submitter(self._ctx)
        self._follow_up = FollowUp(self._ctx, self._submitter)
        self._missed = MissedWindows(self._ctx)
        self._status = Status(self._ctx)
        self._backoff = Backoff(config.retry_initial_secs, config.retry_max_secs, rng=rng)
        self._lock = asyncio.Lock()
        self._started = False
        self._start_ms = 0
        self._previous_heartbeat_ms: int | None = None
        self._first_run_ms = 0
        self._heartbeat_ms = 0
        self._next_systems_check_ms = 0
        self._paused_until_ms: int | None = None
        #: In this pass, every pending system is polled (one batched call) when one is due.
        self._poll_all = False
        self._saved_calls: str | None = None

    # -- the Uplink protocol ------------------------------------------------------------------

    def streams(self) -> dict[str, str]:
        return {system.stream: system.meter for system in self._systems}

    @property
    def client(self) -> PtsClient:
        return self._client

    @property
    def clock(self) -> Clock:
        return self._clock

    def flush(self) -> None:
        """Run a pass now (MQTT `cmd/uplinks/pts/flush`): a credentials pause is probed at
        once. Quota, window and validation rules apply to that pass as to any other."""
        log.info("%s: flush requested: running a pass now", self.name)
        self._paused_until_ms = None
        self._clock.wake()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def run(self) -> None:
        """Evaluate every system each check_every_secs until cancelled (see `step`)."""
        log.info(
            "%s: reporting %d system(s) to %s (%s)",
            self.name,
            len(self._systems),
            self.config.api_root,
            self.config.environment,
        )
        if self.config.environment == "staging":
            log.warning(
                "%s: environment is STAGING: readings are validated but do not count for SRECs",
                self.name,
            )
        try:
            while True:
                try:
                    delay = await self.step()
                except Exception as exc:
                    log.exception("%s: pass failed; retrying", self.name)
                    self._uplink_health.last_error = f"internal: {type(exc).__name__}"
                    delay = self._backoff.next_delay()
                await self._clock.sleep(delay)
        finally:
            await self.aclose()

    async def start(self) -> None:
        """Register the streams (retention) and read what the last run left; idempotent."""
        if self._started:
            return
        now = self._now_ms()
        for system in self._systems:
            system.released_to = await self._astore.register_stream(
                self.name, system.stream, system.meter
            )
        saved_calls = await self._astore.state(self.name, "calls_today")
        if saved_calls:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                saved = json.loads(saved_calls)
                self._client.restore_calls(str(saved["day"]), dict(saved["calls"]))
        heartbeat = await self._astore.state(self.name, "heartbeat_ms")
        first_run = await self._astore.state(self.name, "first_run_ms")
        self._previous_heartbeat_ms = int(heartbeat) if heartbeat else None
        self._first_run_ms = int(first_run) if first_run else now
        if first_run is None:
            await self._astore.put_state(self.name, {"first_run_ms": str(now)})
        self._start_ms = now
        self._started = True

    # -- one pass -----------------------------------------------------------------------------

    async def step(self) -> float:
        """One pass over every system; returns the seconds until the next pass is due."""
        async with self._lock:
            now = self._now_ms()
            if not self._clock.trusted():
                self._status.publish_untrusted()
                return self.config.check_every_secs
            await self.start()
            delay: float | None = None  # None: all went well, wake when the next thing is due
            try:
                if self._paused_until_ms is None or now >= self._paused_until_ms:
                    await self._network_pass(now)
                    self._recovered()
                else:
                    delay = (self._paused_until_ms - now) / 1000
            except PtsCallError as exc:
                delay = self._failed(exc, now)
            await self._local_pass(now)
            await self._status.publish(now)
            if delay is None:
                delay = min(self.config.check_every_secs, self._next_due_secs(now))
            return max(0.0, delay)

    async def _network_pass(self, now: int) -> None:
        if now >= self._next_systems_check_ms:
            await self._check_systems(now)
        window = self._ctx.window_at(now)
        if window is None:
            return
        due = [
            system
            for system in self._systems
            if now >= system.next_poll_ms
            and any(
                row.status in PENDING for row in await self._ctx.counted(system, window.period.key)
            )
        ]
        self._poll_all = bool(due)
        self._ctx.status_cache = {}  # one GetSubmissionStatus for every system of this pass
        try:
            for system in self._systems:
                await self._step_system(system, window, now)
        finally:
            self._ctx.status_cache = None

    async def _step_system(self, system: SystemState, window: Window, now: int) -> None:
        rows = await self._ctx.counted(system, window.period.key)
        if has_passed(rows):
            return
        if any(row.status in PENDING for row in rows):
            if now >= system.next_poll_ms or self._poll_all:
                await self._follow_up.follow_up(system, window, now)
            return
        if system.active is not True:
            return
        if system.blocked_period == window.period.key and now < system.blocked_until_ms:
            return
        if any(row.status in NEEDS_HUMAN for row in rows):
            return  # a human decides (automatic retries happen right after the failure)
        if now < submit_at(window, self.config.submit_after_days):
            return
        await self._submitter.attempt(system, window, now, origin="auto")

    async def _local_pass(self, now: int) -> None:
        """What needs no network: alerts about windows, retention, the heartbeat."""
        await self._missed.report_closed_windows(
            now,
            first_run_ms=self._first_run_ms,
            last_seen_ms=self._previous_heartbeat_ms,
            started_ms=self._start_ms,
        )
        window = self._ctx.window_at(now)
        for system in self._systems:
            if window is not None:
                await self._missed.closing_alert(system, window, now)
            await release_samples(self._ctx, system, window, now)
        calls = self._client
        if calls.calls_day is not None:
            saved = json.dumps({"day": calls.calls_day, "calls": calls.calls_today})
            if saved != self._saved_calls:
                await self._astore.put_state(self.name, {"calls_today": saved})
                self._saved_calls = saved
        if now - self._heartbeat_ms >= HEARTBEAT_EVERY_MS:
            await self._astore.put_state(self.name, {"heartbeat_ms": str(now)})
            self._heartbeat_ms = now

    def _next_due_secs(self, now: int) -> float:
        """Seconds until the next submission or status poll is due (wake on time for it)."""
        due = [self._next_systems_check_ms]
        window = self._ctx.window_at(now)
        for system in self._systems:
            if system.next_poll_ms > now:
                due.append(system.next_poll_ms)
            if window is not None:
                due_at = submit_at(window, self.config.submit_after_days)
                if due_at > now:
                    due.append(due_at)
        return max(0.0, (min(due) - now) / 1000)

    def _failed(self, exc: PtsCallError, now: int) -> float:
        """A call failed: credentials pause the uplink, anything else backs off."""
        self._uplink_health.last_error = str(exc)
        self._uplink_health.last_error_ms = now
        if exc.kind == "auth":
            reason = (
                f"PTS refused the subscription key ({exc}); check uplinks.pts.subscription_key "
                f"and the environment ({self.config.environment})"
            )
            if self._uplink_health.paused_reason is None:
                self._ctx.alert(reason)
            self._uplink_health.paused_reason = reason
            self._paused_until_ms = now + int(self.config.auth_probe_secs * 1000)
            self._next_systems_check_ms = 0  # the probe is a GetSystems
            return self.config.auth_probe_secs
        self._uplink_health.retries += 1
        log.warning("%s: %s; retrying", self.name, exc)
        return self._backoff.next_delay(exc.verdict.retry_after_secs)

    def _recovered(self) -> None:
        if self._uplink_health.paused_reason is not None:
            log.warning("%s: PTS accepts the subscription key again", self.name)
        self._uplink_health.paused_reason = None
        self._paused_until_ms = None
        self._backoff.reset()

    async def _check_systems(self, now: int) -> None:
        """GetSystems now, and again in systems_check_secs."""
        await check_systems(self._ctx, now)
        self._next_systems_check_ms = now + int(self.config.systems_check_secs * 1000)

    # -- reporting and manual actions (CLI, MQTT command) -------------------------------------

    async def report(self, now_ms: int | None = None) -> dict[str, Any]:
        """Per system: window, state, chosen reading, ledger and last validation (local only)."""
        return await self._status.report(self._now_ms() if now_ms is None else now_ms)

    async def submit(
        self,
        fk_system: int | None = None,
        *,
        test: bool = False,
        dry_run: bool | None = None,
    ) -> dict[str, Any]:
        """Submit now, quota-checked (`test`: ARPostTest only, nothing saved, no quota).

        `fk_system=None` submits every configured system ({"ok", "systems": [...]}).
        `dry_run` is the MQTT command's name for `test`. Never raises for PTS failures:
        the outcome says `ok` and `action` (submitted, tested, already_passed, blocked,
        test_failed, refused, waiting, error) and, for a submission, the quota counted.
        """
        if dry_run is not None:
            test = dry_run
        if fk_system is not None and fk_system not in self._by_fk:
            return {"ok": False, "error": f"fk_system {fk_system} is not configured"}
        targets = self._systems if fk_system is None else [self._by_fk[fk_system]]
        async with self._lock:
            now = self._now_ms()
            results = [await self._submit_one(system, now, test=test) for system in targets]
            if self._started:
                await self._status.publish(now)
        if fk_system is not None:
            return results[0]
        return {"ok": all(r.get("ok") for r in results), "test": test, "systems": results}

    async def _submit_one(self, system: SystemState, now: int, *, test: bool) -> dict[str, Any]:
        base: dict[str, Any] = {"fk_system": system.fk, "meter": system.meter, "test": test}
        if not self._clock.trusted():
            return {**base, "ok": False, "error": "the wall clock is not trusted yet"}
        window = self._ctx.window_at(now)
        if window is None:
            upcoming = self._ctx.next_window(now)
            return {
                **base,
                "ok": False,
                "action": "refused",
                "error": f"no reporting window is open; the next ({upcoming.period.label()}) "
                f"opens {eastern(upcoming.open_ms)} Eastern",
            }
        try:
            if system.active is None or now >= self._next_systems_check_ms:
                await self._check_systems(now)
            if system.active is not True:
                return {
                    **base,
                    "ok": False,
                    "action": "refused",
                    "error": f"system not active in PTS: {system.error}",
                }
            outcome = await self._submitter.attempt(system, window, now, origin="manual", test=test)
        except PtsCallError as exc:
            if exc.kind == "auth":
                self._failed(exc, now)  # the uplink pauses as it would in a pass
            return {**base, "ok": False, "action": "error", "error": str(exc)}
        return {**base, **outcome}

    async def poll_status(self, fk_system: int) -> dict[str, Any]:
        """Ask GetSubmissionStatus now for one system's pending submission (CLI follow-up)."""
        system = self._by_fk[fk_system]
        async with self._lock:
            now = self._now_ms()
            window = self._ctx.window_at(now)
            if window is None:
                return {"ok": False, "error": "no reporting window is open"}
            try:
                await self._follow_up.follow_up(system, window, now)
            except PtsCallError as exc:
                return {"ok": False, "error": str(exc)}
            rows = await self._ctx.counted(system, window.period.key)
        last = rows[-1] if rows else None
        return {
            "ok": last is not None and last.status == "passed",
            "status": None if last is None else last.status,
            "notes": None if last is None else last.validation_notes,
        }

    def _now_ms(self) -> int:
        return int(self._clock.time() * 1000)


def build_uplink(section: UplinkConfig, context: UplinkContext) -> PtsUplink:
    """Registered for `uplinks.pts` (gateway.uplinks.pts.config)."""
    assert isinstance(section, PtsConfig)
    return PtsUplink(section, store=context.store, health=context.health)
