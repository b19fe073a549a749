"""MassCEC PTS uplink: one monthly production reading per system, inside the window, within the
quota, verified. A missed or rejected reading can forfeit a month's SRECs, so this uplink is an
accountant: few calls, each one checked before it may cost anything.

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

Invariants:
- Quota is spent only through `Store.pts_claim`: the quota check and the ledger row (status
  `sending`) are one transaction committed before ARPost leaves. A row whose outcome is unknown
  (crash, timeout, 5xx) counts against both quotas until GetSubmissionStatus resolves it: shown
  by PTS -> its status; not shown -> `not_received` (free to send again). So a restart at any
  point never submits twice, and never a 3rd valid or a 4th failed submission (limits: config,
  or a help-desk raise recorded with `meter-gateway pts quota`).
- "Last one in wins": a reading that passed is never submitted again, and nothing is submitted
  automatically once a window has a Passed reading.
- Nothing happens while the wall clock is untrusted (a Pi without RTC boots in the past: the
  window would be wrong).
- Retention: the store deletes delivered samples after gateway.retention_hours, yet a window
  needs its samples for days. Each system registers a stream (`system-<fk_system>`) whose
  cursor stays just before the open of the earliest window that still needs samples (the open
  window until it has a Passed reading); the store keeps every sample after a registered
  cursor. Once the window passes or closes the cursor moves to the next window's open, so
  between windows nothing is held. The ledger keeps what was sent, so follow-up and status
  never need the samples.
- Ledger statuses: sending, received, validating (pending: count on both sides), passed,
  failed, superseded (arrived, then replaced by a later submission we did not make: counts as
  failed), refused (HTTP 400 / per-system Error: not received, blocks automatic submission),
  not_received. Test rows (ARPostTest) never count.
- The subscription key is only ever sent in headers and bodies: never logged, stored or
  published.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from core.backoff import Backoff
from core.config_base import UplinkConfig
from core.flags import CLOCK_UNSYNCED
from core.health import Health
from core.sample import StoredSample
from gateway.clock.clocks import Clock, SystemClock
from gateway.clock.wakeable import WakeableClock
from gateway.store.async_store import AsyncStore
from gateway.timefmt import parse_local_naive
from gateway.uplinks.pts import ledger
from gateway.uplinks.pts.client import (
    FAILED,
    PASSED,
    VALIDATING,
    PtsCallError,
    PtsClient,
    ReadingInfo,
    SessionFactory,
)
from gateway.uplinks.pts.config import PtsConfig, PtsSystemConfig
from gateway.uplinks.pts.ledger import PENDING, PtsClaim, PtsSubmission
from gateway.uplinks.pts.rules import (
    REFUSED_FLAGS,
    LastReading,
    Remedy,
    check_reading,
    flag_problems,
    remedy_for,
    same_reading,
)
from gateway.uplinks.pts.window import (
    EASTERN,
    Reading,
    Window,
    choose_reading,
    closed_windows,
    eastern,
    last_closed_window,
    next_window,
    reading_of,
    submit_at,
    window_at,
)
from gateway.uplinks.registry import UplinkContext

log = logging.getLogger(__name__)

_DAY_MS: Final = 86_400_000
_HOUR_MS: Final = 3_600_000
#: The heartbeat (last pass) is written at most this often: it dates an outage.
HEARTBEAT_EVERY_MS: Final = _HOUR_MS
#: At most this many `clock_unsynced` samples are passed over when choosing a reading.
MAX_UNTIMED_SKIPPED: Final = 10_000
#: A submission PTS still does not show after this long is reported.
UNSEEN_ALERT_MS: Final = 12 * _HOUR_MS
_COUNTED_FAILED: Final = ("failed", "superseded")


@dataclass
class _System:
    meter: str
    fk: int
    config: PtsSystemConfig
    active: bool | None = None
    system_id: str | None = None
    name: str | None = None
    pts_capacity_kw: float | None = None
    error: str | None = None
    next_poll_ms: int = 0
    blocked_period: str | None = None
    blocked_until_ms: int = 0
    problems: list[str] = field(default_factory=list)
    released_to: int = 0

    @property
    def stream(self) -> str:
        return f"system-{self.fk}"

    @property
    def capacity_kw(self) -> float | None:
        return self.config.capacity_kw or self.pts_capacity_kw


def _ms_of(meter_date: str | None) -> int | None:
    if not meter_date:
        return None
    try:
        return parse_local_naive(meter_date, EASTERN)
    except ValueError:
        return None


def _usable(entry: ReadingInfo | None) -> bool:
    """A GetSubmissionStatus entry that names a submission. The service answers for the
    current window only (we only ask while one is open), so its dates are not second-guessed.
    """
    return entry is not None and entry.error is None and entry.value_kwh is not None


def _quota(claim: PtsClaim) -> dict[str, int]:
    return {
        "passed": claim.passed,
        "failed": claim.failed,
        "pending": claim.pending,
        "max_valid": claim.max_valid,
        "max_failed": claim.max_failed,
    }


def _status_name(status: int | None) -> str:
    return {PASSED: "passed", FAILED: "failed", VALIDATING: "validating"}.get(
        status if status is not None else 99, "received"
    )


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
        self._health = health
        # The wait between passes ends early on flush().
        self._clock = WakeableClock(clock or SystemClock())
        self._client = PtsClient(
            config.api_root,
            config.subscription_key,
            timeout_secs=config.timeout_secs,
            query_method=config.query_method,
            session_factory=session_factory,
        )
        self._systems = [
            _System(meter, system.fk_system, system) for meter, system in config.systems.items()
        ]
        self._by_fk = {system.fk: system for system in self._systems}
        self._uplink_health = health.uplink(name)
        self._backoff = Backoff(config.retry_initial_secs, config.retry_max_secs, rng=rng)
        self._lock = asyncio.Lock()
        self._started = False
        self._start_ms = 0
        self._previous_heartbeat_ms: int | None = None
        self._first_run_ms = 0
        self._heartbeat_ms = 0
        self._next_systems_check_ms = 0
        self._paused_until_ms: int | None = None
        self._alerted: set[str] = set()

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
                self._uplink_health.facts = {**self._base_facts(), "clock_trusted": False}
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
            await self._publish(now)
            if delay is None:
                delay = min(self.config.check_every_secs, self._next_due_secs(now))
            return max(0.0, delay)

    async def _network_pass(self, now: int) -> None:
        if now >= self._next_systems_check_ms:
            await self._check_systems(now)
        for system in self._systems:
            window = window_at(now, self.config.window_days_before, self.config.window_days_after)
            if window is not None:
                await self._step_system(system, window, now)

    async def _local_pass(self, now: int) -> None:
        """What needs no network: alerts about windows, retention, the heartbeat."""
        await self._report_closed_windows(now)
        window = window_at(now, self.config.window_days_before, self.config.window_days_after)
        for system in self._systems:
            if window is not None:
                await self._closing_alert(system, window, now)
            await self._release_samples(system, window, now)
        if now - self._heartbeat_ms >= HEARTBEAT_EVERY_MS:
            await self._astore.put_state(self.name, {"heartbeat_ms": str(now)})
            self._heartbeat_ms = now

    def _next_due_secs(self, now: int) -> float:
        """Seconds until the next submission or status poll is due (wake on time for it)."""
        due = [self._next_systems_check_ms]
        window = window_at(now, self.config.window_days_before, self.config.window_days_after)
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
                self._health.alert(self.name, reason)
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

    # -- systems ------------------------------------------------------------------------------

    async def _check_systems(self, now: int) -> None:
        infos = await self._client.get_systems([system.fk for system in self._systems])
        for system in self._systems:
            info = infos.get(system.fk)
            was = system.active
            if info is None or info.error is not None:
                system.active = False
                system.error = (
                    info.error
                    if info is not None and info.error
                    else "not among the organisation's active systems (GetSystems)"
                )
                if was is not False:
                    self._health.alert(
                        self.name,
                        f"PTS system {system.fk} (meter {system.meter}) is unknown or inactive: "
                        f"{system.error}. Nothing is submitted for it; check fk_system and the "
                        "API key's organisation with the MassCEC help desk",
                    )
            else:
                system.active = True
                system.error = None
                system.system_id, system.name = info.system_id, info.name
                system.pts_capacity_kw = info.capacity_kw
                if was is not True:
                    log.info(
                        "%s: system %d (%s %s) is active, capacity %s kW",
                        self.name,
                        system.fk,
                        info.system_id,
                        info.name,
                        info.capacity_kw,
                    )
        self._next_systems_check_ms = now + int(self.config.systems_check_secs * 1000)
        self._uplink_health.last_success_ms = now

    # -- per system ---------------------------------------------------------------------------

    async def _ledger(self, system: _System, period: str) -> list[PtsSubmission]:
        return await self._astore.run(ledger.submissions, system.fk, period)

    async def _update(self, system: _System, window: Window, row_id: int, **fields: Any) -> None:
        await self._astore.run(ledger.update, system.fk, window.period.key, row_id, **fields)

    async def _step_system(self, system: _System, window: Window, now: int) -> None:
        rows = [row for row in await self._ledger(system, window.period.key) if not row.test]
        if any(row.status == "passed" for row in rows):
            return
        if any(row.status in PENDING for row in rows):
            if now >= system.next_poll_ms:
                await self._follow_up(system, window, now)
            return
        if system.active is not True:
            return
        if system.blocked_period == window.period.key and now < system.blocked_until_ms:
            return
        if any(row.status in (*_COUNTED_FAILED, "refused") for row in rows):
            return  # a human decides (automatic retries happen right after the failure)
        if now < submit_at(window, self.config.submit_after_days):
            return
        await self._attempt(system, window, now, origin="auto")

    async def _choose(
        self, system: _System, window: Window, now: int, *, after_end_only: bool = False
    ) -> Reading | None:
        chosen = await self._choose_flagged(system, window, now, after_end_only=after_end_only)
        return None if chosen is None else chosen[0]

    async def _choose_flagged(
        self, system: _System, window: Window, now: int, *, after_end_only: bool = False
    ) -> tuple[Reading, frozenset[str]] | None:
        """The reading to report and its sample's quality flags."""
        latest = min(window.close_ms - 1, now)
        channel = system.config.channel
        found: dict[int, frozenset[str]] = {}
        before = None
        if not after_end_only:
            stored = await self._find_timed(
                system.meter, window.open_ms, min(window.end_ms + 999, latest), channel, last=True
            )
            if stored is not None and (before := reading_of(stored, channel)) is not None:
                found[stored.rowid] = stored.sample.flags
        after = None
        if latest >= window.end_ms + 1000:
            stored = await self._find_timed(system.meter, window.end_ms + 1000, latest, channel)
            if stored is not None and (after := reading_of(stored, channel)) is not None:
                found[stored.rowid] = stored.sample.flags
        reading = choose_reading(window, before, after)
        return None if reading is None else (reading, found[reading.sample_id])

    async def _find_timed(
        self, meter: str, start_ms: int, end_ms: int, channel: str, *, last: bool = False
    ) -> StoredSample | None:
        """Like Store.find_sample, passing over samples stamped by an untrusted clock
        (`clock_unsynced`: a reading at an unknown time cannot be the month-end reading)."""
        for _ in range(MAX_UNTIMED_SKIPPED):
            stored = await self._astore.find_sample(
                meter, start_ms, end_ms, channel=channel, last=last
            )
            if stored is None or CLOCK_UNSYNCED not in stored.sample.flags:
                return stored
            if last:
                end_ms = stored.sample.ts_ms - 1
            else:
                start_ms = stored.sample.ts_ms + 1
        return None

    async def _previous_reading(self, system: _System, reading: Reading) -> Reading | None:
        """The stored reading just before `reading` (the numbers of a counter flag)."""
        channel = system.config.channel
        stored = await self._find_timed(system.meter, 0, reading.ts_ms - 1, channel, last=True)
        return None if stored is None else reading_of(stored, channel)

    async def _attempt(
        self,
        system: _System,
        window: Window,
        now: int,
        *,
        origin: str,
        test: bool = False,
        after_end_only: bool = False,
    ) -> dict[str, Any]:
        """Choose, check, test and (unless `test`) submit one reading; the outcome as JSON."""
        period = window.period.key
        result: dict[str, Any] = {"fk_system": system.fk, "meter": system.meter, "period": period}
        chosen = await self._choose_flagged(system, window, now, after_end_only=after_end_only)
        if chosen is None:
            return {
                **result,
                "ok": False,
                "action": "waiting",
                "error": f"no stored sample with {system.config.channel} in the window yet",
            }
        reading, flags = chosen
        result["reading"] = reading.as_json()
        rows = [row for row in await self._ledger(system, period) if not row.test]
        for row in rows:
            if row.status == "passed" and same_reading(
                reading.value_kwh, reading.meter_date, row.meter_value, row.meter_date
            ):
                return {**result, "ok": True, "action": "already_passed"}
        if not test and not rows and await self._known_to_pts(system, window, now):
            return {**result, "ok": True, "action": "already_in_pts"}
        if not test:  # a refused claim must not cost even an ARPostTest
            claim = await self._claim(system, period, reading, origin, now, check_only=True)
            if claim.refusal is not None:
                return self._refused(system, window, result, claim)

        problems = []
        if flags & REFUSED_FLAGS.keys():
            previous = await self._previous_reading(system, reading)
            problems = flag_problems(reading, flags, previous)
        last = await self._last_reading(system)
        problems += check_reading(
            reading, last, capacity_kw=system.capacity_kw, factor=self.config.plausibility_factor
        )
        if problems:
            self._block(system, period, problems, now)
            return {**result, "ok": False, "action": "blocked", "problems": problems}

        if test or self.config.test_before_submit:
            tested = await self._test(system, window, reading, origin, now)
            if tested is not None:
                before_end = (reading.ts_ms // 1000) * 1000 <= window.end_ms
                remedy = remedy_for(tested.pop("notes"), reading_was_before_end=before_end)
                if remedy is Remedy.READING_AFTER_MONTH_END and not after_end_only:
                    log.warning(
                        "%s: system %d: ARPostTest refused the date of %s; testing the first "
                        "reading after the month end instead",
                        self.name,
                        system.fk,
                        reading.meter_date,
                    )
                    return await self._attempt(
                        system, window, now, origin=origin, test=test, after_end_only=True
                    )
                self._block(system, period, tested["problems"], now)
                return {**result, **tested}
            if test:
                return {**result, "ok": True, "action": "tested", "validation": "passed"}

        claim = await self._claim(system, period, reading, origin, now)
        if claim.row_id is None:
            return self._refused(system, window, result, claim)
        posted = await self._post(system, window, reading, claim.row_id, now)
        return {**result, **posted, "quota": _quota(claim)}

    async def _claim(
        self,
        system: _System,
        period: str,
        reading: Reading,
        origin: str,
        now: int,
        *,
        check_only: bool = False,
    ) -> PtsClaim:
        return await self._astore.run(
            ledger.claim,
            system.fk,
            period,
            origin=origin,
            meter_value=reading.value_kwh,
            meter_date=reading.meter_date,
            sample_id=reading.sample_id,
            max_valid=self.config.quota_valid,
            max_failed=self.config.quota_failed,
            now_ms=now,
            check_only=check_only,
        )

    def _refused(
        self, system: _System, window: Window, result: dict[str, Any], claim: PtsClaim
    ) -> dict[str, Any]:
        if "quota used" in (claim.refusal or ""):
            self._alert_once(
                f"quota:{system.fk}:{window.period.key}",
                f"PTS system {system.fk}: {claim.refusal} in the {window.period.label()} "
                "window; nothing more is submitted. Only the MassCEC help desk can raise "
                "the limit (then: meter-gateway pts quota)",
            )
        return {
            **result,
            "ok": False,
            "action": "refused",
            "error": claim.refusal,
            "quota": _quota(claim),
        }

    async def _known_to_pts(self, system: _System, window: Window, now: int) -> bool:
        """Before our first submission of a window: does PTS already hold one (lost ledger,
        another tool)? A Passed one ends the window for us; any is recorded (it counts)."""
        entry = (await self._client.submission_status([system.fk])).get(system.fk)
        if entry is None or not _usable(entry) or entry.value_kwh is None:
            return False
        status = _status_name(entry.status)
        await self._astore.run(
            ledger.record,
            system.fk,
            window.period.key,
            test=False,
            origin="external",
            meter_value=entry.value_kwh,
            meter_date=entry.meter_date or "",
            sample_id=None,
            status=status,
            validation_notes=entry.notes,
            detail="found in GetSubmissionStatus before our first submission",
            now_ms=now,
        )
        log.warning(
            "%s: system %d already has a %s submission in PTS for %s (%g kWh at %s)",
            self.name,
            system.fk,
            status,
            window.period.label(),
            entry.value_kwh,
            entry.meter_date,
        )
        system.next_poll_ms = now
        return status in ("passed", *PENDING)

    async def _last_reading(self, system: _System) -> LastReading | None:
        info = (await self._client.get_last_reading([system.fk])).get(system.fk)
        if info is None or info.error is not None or info.value_kwh is None:
            return None
        return LastReading(info.value_kwh, info.meter_date, _ms_of(info.meter_date))

    def _block(self, system: _System, period: str, problems: list[str], now: int) -> None:
        """A reading failed a check: report it for a human, re-check in a day."""
        system.blocked_period = period
        system.blocked_until_ms = now + _DAY_MS
        system.problems = problems
        self._alert_once(
            f"blocked:{system.fk}:{period}:{'|'.join(problems)}",
            f"PTS system {system.fk} (meter {system.meter}): reading NOT submitted: "
            + "; ".join(problems),
        )

    async def _test(
        self, system: _System, window: Window, reading: Reading, origin: str, now: int
    ) -> dict[str, Any] | None:
        """ARPostTest, recorded; None when the reading passed it, else the failed outcome
        (with the raw ValidationNotes under `notes`)."""
        try:
            answers = await self._client.post_test([self._payload(system, reading)], self._notes)
        except PtsCallError as exc:
            if exc.kind != "rejected":
                raise
            answers = {}
            problem = f"ARPostTest refused the reading: {exc.verdict.detail}"
        else:
            answer = answers.get(system.fk)
            problem = None
            if answer is not None and answer.error:
                problem = f"ARPostTest: {answer.error}"
            elif answer is not None and answer.status == FAILED:
                problem = f"ARPostTest validation failed: {answer.notes or 'no notes'}"
        answer = answers.get(system.fk)
        await self._astore.run(
            ledger.record,
            system.fk,
            window.period.key,
            test=True,
            origin=origin,
            meter_value=reading.value_kwh,
            meter_date=reading.meter_date,
            sample_id=reading.sample_id,
            status="failed" if problem else _status_name(answer.status if answer else None),
            validation_notes=answer.notes if answer else None,
            detail=problem,
            now_ms=now,
        )
        if problem is None:
            return None
        notes = answer.notes if answer is not None else None
        return {"ok": False, "action": "test_failed", "problems": [problem], "notes": notes}

    @property
    def _notes(self) -> str | None:
        return self.config.notes

    @staticmethod
    def _payload(system: _System, reading: Reading) -> dict[str, object]:
        return {
            "fk_system": system.fk,
            "MeterValue": reading.value_kwh,
            "MeterDate": reading.meter_date,
            "Notes": system.config.notes,
        }

    async def _post(
        self, system: _System, window: Window, reading: Reading, row_id: int, now: int
    ) -> dict[str, Any]:
        """ARPost for a claimed ledger row; the row says what became of it."""
        try:
            answers = await self._client.post([self._payload(system, reading)], self._notes)
        except PtsCallError as exc:
            if exc.maybe_sent:  # resolved by GetSubmissionStatus; counts until then
                system.next_poll_ms = now + int(self.config.status_poll_secs * 1000)
                await self._update(
                    system, window, row_id, status="sending", detail=str(exc), now_ms=now
                )
                raise
            status = "refused" if exc.kind != "retry" else "not_received"
            await self._update(
                system,
                window,
                row_id,
                status=status,
                http_status=exc.status,
                detail=str(exc),
                now_ms=now,
            )
            if status == "refused":
                self._alert_once(
                    f"refused:{system.fk}:{window.period.key}:{row_id}",
                    f"PTS refused the submission of system {system.fk} "
                    f"({reading.value_kwh:g} kWh at {reading.meter_date}): {exc.verdict.detail}",
                )
                return {"ok": False, "action": "refused", "error": str(exc)}
            raise
        answer = answers.get(system.fk)
        if answer is not None and answer.error:
            await self._update(
                system, window, row_id, status="refused", detail=answer.error, now_ms=now
            )
            self._alert_once(
                f"refused:{system.fk}:{window.period.key}:{row_id}",
                f"PTS refused the submission of system {system.fk} "
                f"({reading.value_kwh:g} kWh at {reading.meter_date}): {answer.error}",
            )
            return {"ok": False, "action": "refused", "error": answer.error}
        await self._update(system, window, row_id, status="received", now_ms=now)
        system.next_poll_ms = now + int(self.config.status_poll_secs * 1000)
        self._uplink_health.delivered += 1
        self._uplink_health.last_success_ms = now
        log.info(
            "%s: submitted system %d for %s: %g kWh at %s Eastern; validating",
            self.name,
            system.fk,
            window.period.label(),
            reading.value_kwh,
            reading.meter_date,
        )
        return {"ok": True, "action": "submitted", "status": "received"}

    async def _follow_up(self, system: _System, window: Window, now: int) -> None:
        """Resolve this window's pending rows with GetSubmissionStatus."""
        system.next_poll_ms = now + int(self.config.status_poll_secs * 1000)
        entry = (await self._client.submission_status([system.fk])).get(system.fk)
        if not _usable(entry):
            entry = None
        for row in await self._ledger(system, window.period.key):
            if row.test or row.status not in PENDING:
                continue
            if entry is not None and same_reading(
                row.meter_value, row.meter_date, entry.value_kwh, entry.meter_date
            ):
                status = _status_name(entry.status)
                if status == row.status or (status == "received" and row.status == "validating"):
                    continue
                await self._update(
                    system,
                    window,
                    row.id,
                    status=status,
                    validation_notes=entry.notes,
                    now_ms=now,
                )
                if status == "passed":
                    log.info(
                        "%s: system %d %s reading PASSED validation (%g kWh at %s)%s",
                        self.name,
                        system.fk,
                        window.period.label(),
                        row.meter_value,
                        row.meter_date,
                        f": {entry.notes}" if entry.notes else "",
                    )
                elif status == "failed":
                    await self._on_failed(system, window, row, entry.notes, now)
            elif row.status == "sending":
                # Last one in wins: had ours arrived, PTS would show it.
                await self._update(
                    system,
                    window,
                    row.id,
                    status="not_received",
                    detail="GetSubmissionStatus shows no such submission",
                    now_ms=now,
                )
                log.warning(
                    "%s: system %d: the submission of %g kWh at %s did not reach PTS; it will "
                    "be sent again",
                    self.name,
                    system.fk,
                    row.meter_value,
                    row.meter_date,
                )
            elif entry is not None:
                await self._update(
                    system,
                    window,
                    row.id,
                    status="superseded",
                    detail=f"PTS shows {entry.value_kwh:g} kWh at {entry.meter_date} instead",
                    now_ms=now,
                )
                self._alert_once(
                    f"superseded:{system.fk}:{window.period.key}:{row.id}",
                    f"PTS system {system.fk}: our submission ({row.meter_value:g} kWh at "
                    f"{row.meter_date}) was replaced by another one ({entry.value_kwh:g} kWh at "
                    f"{entry.meter_date}, status {_status_name(entry.status)}): another tool "
                    "submits for this system?",
                )
            elif now - row.updated_ms >= UNSEEN_ALERT_MS:
                self._alert_once(
                    f"unseen:{system.fk}:{window.period.key}:{row.id}",
                    f"PTS system {system.fk}: ARPost was accepted at {eastern(row.updated_ms)} "
                    "but GetSubmissionStatus still does not show the submission",
                )

    async def _on_failed(
        self, system: _System, window: Window, row: PtsSubmission, notes: str | None, now: int
    ) -> None:
        """Report a Failed validation; retry once when the gateway can fix the cause."""
        message = (
            f"PTS system {system.fk}: the {window.period.label()} reading "
            f"({row.meter_value:g} kWh at {row.meter_date}) FAILED validation: "
            f"{notes or 'no ValidationNotes'}"
        )
        was_before_end = (_ms_of(row.meter_date) or 0) <= window.end_ms
        remedy = remedy_for(notes, reading_was_before_end=was_before_end)
        rows = [r for r in await self._ledger(system, window.period.key) if not r.test]
        failed = sum(1 for r in rows if r.status in _COUNTED_FAILED)
        _, max_failed, _ = await self._astore.run(
            ledger.limits,
            system.fk,
            window.period.key,
            self.config.quota_valid,
            self.config.quota_failed,
        )
        retried = any(r.origin == "retry" for r in rows)
        if remedy is None or not self.config.auto_retry or retried:
            self._health.alert(self.name, message + ". A human must decide (meter-gateway pts)")
            return
        if failed + 1 >= max_failed:
            self._health.alert(
                self.name,
                f"{message}. Not retried automatically: {failed} of {max_failed} failed "
                "submissions used, the last one is kept for a human",
            )
            return
        self._health.alert(self.name, f"{message}. Retrying automatically ({remedy.value})")
        outcome = await self._attempt(
            system,
            window,
            now,
            origin="retry",
            after_end_only=remedy is Remedy.READING_AFTER_MONTH_END,
        )
        if not outcome.get("ok"):
            self._health.alert(
                self.name,
                f"PTS system {system.fk}: automatic retry not submitted: "
                f"{outcome.get('error') or outcome.get('problems') or outcome.get('action')}",
            )

    # -- windows closing and closed -----------------------------------------------------------

    async def _closing_alert(self, system: _System, window: Window, now: int) -> None:
        alert_from = window.close_ms - int(self.config.missed_window_alert_hours * _HOUR_MS)
        if now < alert_from:
            return
        key = f"closing_alerted:{system.fk}"
        if await self._astore.state(self.name, key) == window.period.key:
            return
        rows = [row for row in await self._ledger(system, window.period.key) if not row.test]
        if any(row.status == "passed" for row in rows):
            return
        hours = (window.close_ms - now) / _HOUR_MS
        self._health.alert(
            self.name,
            f"PTS window for {window.period.label()} closes at {eastern(window.close_ms)} "
            f"Eastern (in {hours:.0f} h) and system {system.fk} (meter {system.meter}) has no "
            f"passed reading: {await self._why_not_passed(system, window, rows, now)}. "
            "If none passes, PTS estimates the month and its SRECs may be forfeited",
        )
        await self._astore.put_state(self.name, {key: window.period.key})

    async def _why_not_passed(
        self, system: _System, window: Window, rows: list[PtsSubmission], now: int
    ) -> str:
        if system.active is False:
            return f"the system is not active in PTS ({system.error})"
        if rows:
            last = rows[-1]
            text = f"last submission {last.status}"
            if last.validation_notes:
                text += f" ({last.validation_notes})"
            return text
        if system.blocked_period == window.period.key and system.problems:
            return "the reading failed a check: " + "; ".join(system.problems)
        if await self._choose(system, window, now) is None:
            return f"no sample of meter {system.meter} in the window (meter or gateway offline?)"
        if self._uplink_health.paused_reason:
            return self._uplink_health.paused_reason
        return "not submitted yet"

    async def _report_closed_windows(self, now: int) -> None:
        """Once per window that closed since we last looked: say if it ended without a pass."""
        days = (self.config.window_days_before, self.config.window_days_after)
        for system in self._systems:
            key = f"closed_reported:{system.fk}"
            seen = await self._astore.state(self.name, key)
            after = int(seen) if seen else self._first_run_ms
            windows = closed_windows(after, now, *days)
            for window in windows:
                rows = [r for r in await self._ledger(system, window.period.key) if not r.test]
                if any(row.status == "passed" for row in rows):
                    continue
                message = (
                    f"PTS window for {window.period.label()} ({window.describe()}) CLOSED "
                    f"without a passed reading for system {system.fk} (meter {system.meter})"
                )
                outage = self._previous_heartbeat_ms
                if outage is not None and outage < window.close_ms <= self._start_ms:
                    across = " across the WHOLE window" if outage < window.open_ms else ""
                    message += (
                        f": the gateway was NOT RUNNING{across} (last seen "
                        f"{eastern(outage)}, back {eastern(self._start_ms)} Eastern)"
                    )
                elif rows:
                    message += f": last submission {rows[-1].status}"
                    if rows[-1].validation_notes:
                        message += f" ({rows[-1].validation_notes})"
                message += (
                    ". PTS will estimate the month; ask the MassCEC help desk (pts@masscec.com) "
                    "about a late reading"
                )
                self._health.alert(self.name, message)
            if windows:
                await self._astore.put_state(self.name, {key: str(windows[-1].close_ms)})

    # -- retention ----------------------------------------------------------------------------

    async def _release_samples(self, system: _System, window: Window | None, now: int) -> None:
        """Move the stream's cursor to just before the earliest window still needing samples."""
        days = (self.config.window_days_before, self.config.window_days_after)
        needed_from = next_window(now, *days).open_ms
        if window is not None:
            rows = await self._ledger(system, window.period.key)
            if not any(row.status == "passed" and not row.test for row in rows):
                needed_from = window.open_ms
        last = await self._astore.find_sample(
            system.meter, 0, min(needed_from, now + 1) - 1, last=True
        )
        if last is not None and last.rowid > system.released_to:
            await self._astore.advance(self.name, system.stream, last.rowid)
            system.released_to = last.rowid

    # -- reporting ----------------------------------------------------------------------------

    def _alert_once(self, key: str, message: str) -> None:
        if key not in self._alerted:
            self._alerted.add(key)
            self._health.alert(self.name, message)

    def _base_facts(self) -> dict[str, Any]:
        return {
            "environment": self.config.environment,
            "api": self.config.api_root,
            "clock_trusted": True,
        }

    async def _publish(self, now: int) -> None:
        report = await self.report(now)
        self._uplink_health.facts = {**self._base_facts(), **report}

    async def report(self, now_ms: int | None = None) -> dict[str, Any]:
        """Per system: window, state, chosen reading, ledger and last validation (local only)."""
        now = self._now_ms() if now_ms is None else now_ms
        days = (self.config.window_days_before, self.config.window_days_after)
        window = window_at(now, *days)
        shown = window or last_closed_window(now, *days)
        upcoming = next_window(now, *days)
        systems: dict[str, Any] = {}
        for system in self._systems:
            rows = await self._ledger(system, shown.period.key)
            counted = [row for row in rows if not row.test]
            max_valid, max_failed, override = await self._astore.run(
                ledger.limits,
                system.fk,
                shown.period.key,
                self.config.quota_valid,
                self.config.quota_failed,
            )
            reading = await self._choose(system, shown, min(now, shown.close_ms - 1))
            last = next((row for row in reversed(rows) if row.status != "sending"), None)
            systems[str(system.fk)] = {
                "meter": system.meter,
                "active": system.active,
                "system_id": system.system_id,
                "capacity_kw": system.capacity_kw,
                "period": shown.period.key,
                "window": {
                    "open": eastern(shown.open_ms),
                    "close": eastern(shown.close_ms),
                    "is_open": window is not None,
                },
                "submit_at": eastern(submit_at(shown, self.config.submit_after_days)),
                "state": self._state(
                    system,
                    window=shown,
                    rows=counted,
                    reading=reading,
                    now=now,
                    is_open=window is not None,
                ),
                "reading": None if reading is None else reading.as_json(),
                "quota": {
                    "passed": sum(1 for r in counted if r.status == "passed"),
                    "failed": sum(1 for r in counted if r.status in _COUNTED_FAILED),
                    "pending": sum(1 for r in counted if r.status in PENDING),
                    "max_valid": max_valid,
                    "max_failed": max_failed,
                    "override": override,
                },
                "last_validation": None
                if last is None
                else {
                    "test": last.test,
                    "status": last.status,
                    "notes": last.validation_notes,
                    "detail": last.detail,
                    "MeterValue": last.meter_value,
                    "MeterDate": last.meter_date,
                    "at": eastern(last.updated_ms),
                },
                "problems": list(system.problems)
                if system.blocked_period == shown.period.key
                else [],
            }
        return {
            "now": eastern(now),
            "next_window": {"period": upcoming.period.key, "open": eastern(upcoming.open_ms)},
            "systems": systems,
        }

    def _state(
        self,
        system: _System,
        *,
        window: Window,
        rows: list[PtsSubmission],
        reading: Reading | None,
        now: int,
        is_open: bool,
    ) -> str:
        statuses = [row.status for row in rows]
        if "passed" in statuses:
            return "passed"
        if any(status in PENDING for status in statuses):
            return "validating"
        if not is_open:
            return "closed without a passed reading"
        if system.active is False:
            return "inactive in PTS"
        if system.blocked_period == window.period.key and system.problems:
            return "blocked: needs a human"
        if any(status in (*_COUNTED_FAILED, "refused") for status in statuses):
            return f"{statuses[-1]}: needs a human"
        if reading is None:
            return "no reading in the window yet"
        if now < submit_at(window, self.config.submit_after_days):
            return "waiting to submit"
        return "due"

    # -- manual submission (CLI, MQTT command) ------------------------------------------------

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
                await self._publish(now)
        if fk_system is not None:
            return results[0]
        return {"ok": all(r.get("ok") for r in results), "test": test, "systems": results}

    async def _submit_one(self, system: _System, now: int, *, test: bool) -> dict[str, Any]:
        base: dict[str, Any] = {"fk_system": system.fk, "meter": system.meter, "test": test}
        if not self._clock.trusted():
            return {**base, "ok": False, "error": "the wall clock is not trusted yet"}
        days = (self.config.window_days_before, self.config.window_days_after)
        window = window_at(now, *days)
        if window is None:
            upcoming = next_window(now, *days)
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
            outcome = await self._attempt(system, window, now, origin="manual", test=test)
        except PtsCallError as exc:
            return {**base, "ok": False, "action": "error", "error": str(exc)}
        return {**base, **outcome}

    async def poll_status(self, fk_system: int) -> dict[str, Any]:
        """Ask GetSubmissionStatus now for one system's pending submission (CLI follow-up)."""
        system = self._by_fk[fk_system]
        async with self._lock:
            now = self._now_ms()
            days = (self.config.window_days_before, self.config.window_days_after)
            window = window_at(now, *days)
            if window is None:
                return {"ok": False, "error": "no reporting window is open"}
            try:
                await self._follow_up(system, window, now)
            except PtsCallError as exc:
                return {"ok": False, "error": str(exc)}
            rows = [row for row in await self._ledger(system, window.period.key) if not row.test]
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
