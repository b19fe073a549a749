"""One PTS submission: choose the reading, check it, claim quota, ARPostTest/ARPost, record.

Each submission, automatic (the pass), a retry (gateway.uplinks.pts.followup) or manual (CLI,
MQTT), goes through `Submitter.attempt`, so all of them are checked and counted the same way.

Invariants:
- Quota is spent only through `ledger.claim`: the quota check and the ledger row (status
  `sending`) are one transaction committed before ARPost leaves. A row whose outcome is unknown
  (crash, timeout, 5xx) counts against both quotas until GetSubmissionStatus resolves it
  (gateway.uplinks.pts.followup). So a restart at any point never submits twice, and never a
  3rd valid or a 4th failed submission (limits: config, or a help-desk raise recorded with
  `meter-gateway pts quota`).
- "Last one in wins": a reading that passed is never submitted again.
- A reading failing a local check or ARPostTest is NOT submitted: it is reported with its
  numbers for a human and re-checked a day later (a human can submit by CLI). A claim the
  ledger refuses costs not even an ARPostTest.
- Before the first submission of a window, GetSubmissionStatus tells whether PTS already has
  one (a lost ledger, another tool); it is recorded (it counts), and a Passed one ends the
  window for us.
- Test rows (ARPostTest) are recorded; with count_failed_tests a failed test, or one whose
  answer says nothing of the system ("unknown", never taken for a pass), counts as a failed
  submission, and no test is run when the failed quota is used up or a submission is
  pending (last one in wins: a test might invalidate it).
- ARPost answered 400 ("Bad API Key"): nothing was received and nothing counts; the uplink
  pauses (credentials) and submits once the key works again.
- MeterValue is the register in kWh rounded down to meter_value_decimals: what PTS stores
  and echoes, so our own reading is recognised in its answers.
"""

from __future__ import annotations

from typing import Any

from gateway.uplinks.pts import ledger
from gateway.uplinks.pts.client import FAILED, PASSED, PtsCallError
from gateway.uplinks.pts.ledger import PENDING, PtsClaim
from gateway.uplinks.pts.rules import (
    REFUSED_FLAGS,
    LastReading,
    Remedy,
    check_reading,
    flag_problems,
    remedy_for,
    same_reading,
)
from gateway.uplinks.pts.samples import choose, previous_reading
from gateway.uplinks.pts.state import DAY_MS, PtsContext, SystemState, log, status_name, usable
from gateway.uplinks.pts.window import Reading, Window, parse_meter_date


class Submitter:
    """Checks and submits one system's reading for one window; see the module invariants."""

    def __init__(self, ctx: PtsContext) -> None:
        self._ctx = ctx

    async def attempt(
        self,
        system: SystemState,
        window: Window,
        now: int,
        *,
        origin: str,
        test: bool = False,
        after_end_only: bool = False,
    ) -> dict[str, Any]:
        """Choose, check, test and (unless `test`) submit one reading; the outcome as JSON."""
        ctx = self._ctx
        period = window.period.key
        result: dict[str, Any] = {"fk_system": system.fk, "meter": system.meter, "period": period}
        decimals = ctx.config.meter_value_decimals
        chosen = await choose(
            ctx.astore, system, window, now, after_end_only=after_end_only, decimals=decimals
        )
        if chosen is None:
            return {
                **result,
                "ok": False,
                "action": "waiting",
                "error": f"no stored sample with {system.config.channel} in the window yet",
            }
        reading, flags = chosen
        result["reading"] = reading.as_json()
        rows = await ctx.counted(system, period)
        for row in rows:
            if row.status == "passed" and same_reading(
                reading.value_kwh,
                reading.meter_date,
                row.meter_value,
                row.meter_date,
                tolerance_kwh=ctx.echo_tolerance,
            ):
                return {**result, "ok": True, "action": "already_passed"}
        if not test and not rows and await self._known_to_pts(system, window, now):
            return {**result, "ok": True, "action": "already_in_pts"}
        if not test or ctx.config.count_failed_tests:
            # A refused claim must not cost even an ARPostTest, and a test that may count
            # as a failure needs a failed submission left.
            claim = await self._claim(system, period, reading, origin, now, check_only=True)
            if claim.refusal is not None:
                return self._refused(system, window, result, claim)

        problems = []
        if flags & REFUSED_FLAGS.keys():
            previous = await previous_reading(ctx.astore, system, reading, decimals)
            problems = flag_problems(reading, flags, previous)
        last = await self._last_reading(system)
        problems += check_reading(
            reading,
            last,
            capacity_kw=system.capacity_kw,
            factor=ctx.config.plausibility_factor,
            decimals=decimals,
        )
        if problems:
            self._block(system, period, problems, now)
            return {**result, "ok": False, "action": "blocked", "problems": problems}

        if test or ctx.config.test_before_submit:
            tested = await self._test(system, window, reading, origin, now)
            if tested is not None:
                before_end = (reading.ts_ms // 1000) * 1000 <= window.end_ms
                remedy = remedy_for(tested.pop("notes"), reading_was_before_end=before_end)
                if remedy is Remedy.READING_AFTER_MONTH_END and not after_end_only:
                    log.warning(
                        "%s: system %d: ARPostTest refused the date of %s; testing the first "
                        "reading after the month end instead",
                        ctx.name,
                        system.fk,
                        reading.meter_date,
                    )
                    return await self.attempt(
                        system, window, now, origin=origin, test=test, after_end_only=True
                    )
                self._block(system, period, tested["problems"], now)
                return {**result, **tested}
            if test:
                validation = system.last_test or "passed"
                return {
                    **result,
                    "ok": validation == "passed",
                    "action": "tested",
                    "validation": validation,
                }

        claim = await self._claim(system, period, reading, origin, now)
        if claim.row_id is None:
            return self._refused(system, window, result, claim)
        posted = await self._post(system, window, reading, claim.row_id, now)
        return {**result, **posted, "quota": claim.as_json()}

    async def _claim(
        self,
        system: SystemState,
        period: str,
        reading: Reading,
        origin: str,
        now: int,
        *,
        check_only: bool = False,
    ) -> PtsClaim:
        return await self._ctx.astore.run(
            ledger.claim,
            system.fk,
            period,
            origin=origin,
            meter_value=reading.value_kwh,
            meter_date=reading.meter_date,
            sample_id=reading.sample_id,
            max_valid=self._ctx.config.quota_valid,
            max_failed=self._ctx.config.quota_failed,
            now_ms=now,
            tolerance_kwh=self._ctx.echo_tolerance,
            count_tests=self._ctx.config.count_failed_tests,
            check_only=check_only,
        )

    def _refused(
        self, system: SystemState, window: Window, result: dict[str, Any], claim: PtsClaim
    ) -> dict[str, Any]:
        if "quota used" in (claim.refusal or ""):
            self._ctx.alert_once(
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
            "quota": claim.as_json(),
        }

    async def _known_to_pts(self, system: SystemState, window: Window, now: int) -> bool:
        """Before our first submission of a window: does PTS already hold one (lost ledger,
        another tool)? A Passed one ends the window for us; any is recorded (it counts)."""
        ctx = self._ctx
        entry = (await ctx.submission_status([system])).get(system.fk)
        if entry is None or not usable(entry) or entry.value_kwh is None:
            return False
        status = status_name(entry.status)
        await ctx.astore.run(
            ledger.record,
            system.fk,
            window.period.key,
            ledger.NewEntry(
                test=False,
                origin="external",
                meter_value=entry.value_kwh,
                meter_date=entry.meter_date or "",
                sample_id=None,
                status=status,
                validation_notes=entry.notes,
                detail="found in GetSubmissionStatus before our first submission",
            ),
            now_ms=now,
        )
        log.warning(
            "%s: system %d already has a %s submission in PTS for %s (%g kWh at %s)",
            ctx.name,
            system.fk,
            status,
            window.period.label(),
            entry.value_kwh,
            entry.meter_date,
        )
        system.next_poll_ms = now
        return status in ("passed", *PENDING)

    async def _last_reading(self, system: SystemState) -> LastReading | None:
        info = (await self._ctx.client.get_last_reading([system.fk])).get(system.fk)
        if info is None or info.error is not None or info.value_kwh is None:
            return None
        return LastReading(info.value_kwh, info.meter_date, parse_meter_date(info.meter_date))

    def _block(self, system: SystemState, period: str, problems: list[str], now: int) -> None:
        """A reading failed a check: report it for a human, re-check in a day."""
        system.blocked_period = period
        system.blocked_until_ms = now + DAY_MS
        system.problems = problems
        self._ctx.alert_once(
            f"blocked:{system.fk}:{period}:{'|'.join(problems)}",
            f"PTS system {system.fk} (meter {system.meter}): reading NOT submitted: "
            + "; ".join(problems),
        )

    async def _test(
        self, system: SystemState, window: Window, reading: Reading, origin: str, now: int
    ) -> dict[str, Any] | None:
        """ARPostTest, recorded; None when the reading passed it, else the failed outcome
        (with the raw ValidationNotes under `notes`)."""
        ctx = self._ctx
        problem: str | None
        try:
            answers = await ctx.client.post_test([_payload(system, reading)], ctx.config.notes)
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
        status = "failed" if problem else status_name(answer.status if answer else None)
        if problem is None and (answer is None or answer.status != PASSED):
            # No word on this system (the answer body is not documented): not a pass.
            status = "unknown"
            log.warning(
                "%s: system %d: ARPostTest answered without a validation result for it; "
                "counted as unknown%s",
                ctx.name,
                system.fk,
                " (and against the failed quota)" if ctx.config.count_failed_tests else "",
            )
        system.last_test = "failed" if problem else status
        await ctx.astore.run(
            ledger.record,
            system.fk,
            window.period.key,
            ledger.NewEntry(
                test=True,
                origin=origin,
                meter_value=reading.value_kwh,
                meter_date=reading.meter_date,
                sample_id=reading.sample_id,
                status=status,
                validation_notes=answer.notes if answer else None,
                detail=problem,
            ),
            now_ms=now,
        )
        if problem is None:
            return None
        notes = answer.notes if answer is not None else None
        return {"ok": False, "action": "test_failed", "problems": [problem], "notes": notes}

    async def _post(
        self, system: SystemState, window: Window, reading: Reading, row_id: int, now: int
    ) -> dict[str, Any]:
        """ARPost for a claimed ledger row; the row says what became of it."""
        ctx = self._ctx
        try:
            answers = await ctx.client.post([_payload(system, reading)], ctx.config.notes)
        except PtsCallError as exc:
            if exc.kind == "auth":
                # "400 : Bad API Key": nothing was received, nothing counts; the uplink
                # pauses (credentials), probes, and submits again once the key works.
                await ctx.update(
                    system,
                    window,
                    row_id,
                    status="not_received",
                    http_status=exc.status,
                    detail=f"{exc} (the key was refused: not received)",
                    now_ms=now,
                )
                raise
            if exc.maybe_sent:  # resolved by GetSubmissionStatus; counts until then
                system.submitted(now, ctx.config.status_poll_secs)
                await ctx.update(
                    system, window, row_id, status="sending", detail=str(exc), now_ms=now
                )
                raise
            status = "refused" if exc.kind != "retry" else "not_received"
            await ctx.update(
                system,
                window,
                row_id,
                status=status,
                http_status=exc.status,
                detail=str(exc),
                now_ms=now,
            )
            if status == "refused":
                self._alert_refused(system, window, reading, row_id, exc.verdict.detail)
                return {"ok": False, "action": "refused", "error": str(exc)}
            raise
        answer = answers.get(system.fk)
        if answer is not None and answer.error:
            await ctx.update(
                system, window, row_id, status="refused", detail=answer.error, now_ms=now
            )
            self._alert_refused(system, window, reading, row_id, answer.error)
            return {"ok": False, "action": "refused", "error": answer.error}
        await ctx.update(system, window, row_id, status="received", now_ms=now)
        system.submitted(now, ctx.config.status_poll_secs)
        ctx.uplink_health.delivered += 1
        ctx.uplink_health.last_success_ms = now
        log.info(
            "%s: submitted system %d for %s: %g kWh at %s Eastern; validating",
            ctx.name,
            system.fk,
            window.period.label(),
            reading.value_kwh,
            reading.meter_date,
        )
        return {"ok": True, "action": "submitted", "status": "received"}

    def _alert_refused(
        self, system: SystemState, window: Window, reading: Reading, row_id: int, why: str
    ) -> None:
        self._ctx.alert_once(
            f"refused:{system.fk}:{window.period.key}:{row_id}",
            f"PTS refused the submission of system {system.fk} "
            f"({reading.value_kwh:g} kWh at {reading.meter_date}): {why}",
        )


def _payload(system: SystemState, reading: Reading) -> dict[str, object]:
    return {
        "fk_system": system.fk,
        "MeterValue": reading.value_kwh,
        "MeterDate": reading.meter_date,
        "Notes": system.config.notes,
    }
