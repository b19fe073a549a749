"""After ARPost: GetSubmissionStatus until a submission Passed or Failed, and what then.

The pass (and `meter-gateway pts submit --wait`) calls `FollowUp.follow_up` while a window
has a pending ledger row: status_poll_secs after the submission, then at doubling intervals
up to status_poll_max_secs, every pending system in one batched call.

Invariants:
- A pending row (sending, received, validating) is resolved only by what GetSubmissionStatus
  shows: the same reading (MeterDate, and MeterValue within one step of the rounding) -> its
  status (and ValidationNotes); another reading -> `superseded` (counts as failed: another
  tool submits?); a `sending` row (ARPost without an answer) PTS does not show ->
  `not_received`, free to send again, but only once PTS has had a fair time to show it
  (unseen_after_secs AND unseen_polls polls): PTS first writes a submission to an "interim
  table", and a resend on a guess could spend the second valid submission.
- A Failed reading is reported; it is retried automatically only when the notes name
  something the gateway can fix (the date, or a transient validation failure), once per
  window, and only while one failed submission stays in reserve for a human.
"""

from __future__ import annotations

from typing import Final

from gateway.uplinks.pts.ledger import PENDING, PtsSubmission
from gateway.uplinks.pts.rules import Remedy, remedy_for, same_reading
from gateway.uplinks.pts.state import HOUR_MS, PtsContext, SystemState, log, status_name, usable
from gateway.uplinks.pts.submission import Submitter
from gateway.uplinks.pts.window import Window, eastern, parse_meter_date

#: A submission PTS still does not show after this long is reported.
UNSEEN_ALERT_MS: Final = 12 * HOUR_MS


class FollowUp:
    """Resolves pending submissions and retries a fixable failure; see the module invariants."""

    def __init__(self, ctx: PtsContext, submitter: Submitter) -> None:
        self._ctx = ctx
        self._submitter = submitter

    async def follow_up(self, system: SystemState, window: Window, now: int) -> None:
        """Resolve this window's pending rows with GetSubmissionStatus."""
        ctx = self._ctx
        config = ctx.config
        system.polled(now, config.status_poll_secs, config.status_poll_max_secs)
        entry = (await ctx.submission_status([system])).get(system.fk)
        if not usable(entry):
            entry = None
        pending = [
            row for row in await ctx.counted(system, window.period.key) if row.status in PENDING
        ]
        if entry is None:
            system.unseen_polls += 1
        for row in pending:
            if entry is not None and same_reading(
                row.meter_value,
                row.meter_date,
                entry.value_kwh,
                entry.meter_date,
                tolerance_kwh=ctx.echo_tolerance,
            ):
                status = status_name(entry.status)
                if status == row.status or (status == "received" and row.status == "validating"):
                    continue
                await ctx.update(
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
                        ctx.name,
                        system.fk,
                        window.period.label(),
                        row.meter_value,
                        row.meter_date,
                        f": {entry.notes}" if entry.notes else "",
                    )
                elif status == "failed":
                    await self._on_failed(system, window, row, entry.notes, now)
            elif row.status == "sending" and entry is None:
                await self._unseen(system, window, row, now)
            elif entry is not None:
                await ctx.update(
                    system,
                    window,
                    row.id,
                    status="superseded",
                    detail=f"PTS shows {entry.value_kwh:g} kWh at {entry.meter_date} instead",
                    now_ms=now,
                )
                ctx.alert_once(
                    f"superseded:{system.fk}:{window.period.key}:{row.id}",
                    f"PTS system {system.fk}: our submission ({row.meter_value:g} kWh at "
                    f"{row.meter_date}) was replaced by another one ({entry.value_kwh:g} kWh at "
                    f"{entry.meter_date}, status {status_name(entry.status)}): another tool "
                    "submits for this system?",
                )
            elif now - row.updated_ms >= UNSEEN_ALERT_MS:
                ctx.alert_once(
                    f"unseen:{system.fk}:{window.period.key}:{row.id}",
                    f"PTS system {system.fk}: ARPost was accepted at {eastern(row.updated_ms)} "
                    "but GetSubmissionStatus still does not show the submission",
                )
        rows = await ctx.counted(system, window.period.key)
        if not any(row.status in PENDING for row in rows):
            system.next_poll_ms = 0  # nothing to poll for: not due in a batch either

    async def _unseen(
        self, system: SystemState, window: Window, row: PtsSubmission, now: int
    ) -> None:
        """ARPost got no answer and PTS does not show the submission (yet)."""
        ctx = self._ctx
        waited_ms = now - row.updated_ms
        if (
            waited_ms < ctx.config.unseen_after_secs * 1000
            or system.unseen_polls < ctx.config.unseen_polls
        ):
            log.info(
                "%s: system %d: the submission of %g kWh at %s is not shown yet (%d poll(s), "
                "%.0f s); PTS may still be writing it: waiting before calling it lost",
                ctx.name,
                system.fk,
                row.meter_value,
                row.meter_date,
                system.unseen_polls,
                waited_ms / 1000,
            )
            return
        await ctx.update(
            system,
            window,
            row.id,
            status="not_received",
            detail=(
                f"GetSubmissionStatus did not show it in {system.unseen_polls} polls over "
                f"{waited_ms / 3_600_000:.1f} h"
            ),
            now_ms=now,
        )
        log.warning(
            "%s: system %d: the submission of %g kWh at %s did not reach PTS (not shown in %d "
            "polls over %.1f h); it will be sent again",
            ctx.name,
            system.fk,
            row.meter_value,
            row.meter_date,
            system.unseen_polls,
            waited_ms / 3_600_000,
        )

    async def _on_failed(
        self,
        system: SystemState,
        window: Window,
        row: PtsSubmission,
        notes: str | None,
        now: int,
    ) -> None:
        """Report a Failed validation; retry once when the gateway can fix the cause."""
        ctx = self._ctx
        message = (
            f"PTS system {system.fk}: the {window.period.label()} reading "
            f"({row.meter_value:g} kWh at {row.meter_date}) FAILED validation: "
            f"{notes or 'no ValidationNotes'}"
        )
        was_before_end = (parse_meter_date(row.meter_date) or 0) <= window.end_ms
        remedy = remedy_for(notes, reading_was_before_end=was_before_end)
        rows = await ctx.counted(system, window.period.key)
        quota, _ = await ctx.quota(system, window.period.key)
        retried = any(r.origin == "retry" for r in rows)
        if remedy is None or not ctx.config.auto_retry or retried:
            ctx.alert(message + ". A human must decide (meter-gateway pts)")
            return
        if quota.failed + 1 >= quota.max_failed:
            ctx.alert(
                f"{message}. Not retried automatically: {quota.failed} of {quota.max_failed} "
                "failed submissions used, the last one is kept for a human",
            )
            return
        ctx.alert(f"{message}. Retrying automatically ({remedy.value})")
        outcome = await self._submitter.attempt(
            system,
            window,
            now,
            origin="retry",
            after_end_only=remedy is Remedy.READING_AFTER_MONTH_END,
        )
        if not outcome.get("ok"):
            ctx.alert(
                f"PTS system {system.fk}: automatic retry not submitted: "
                f"{outcome.get('error') or outcome.get('problems') or outcome.get('action')}",
            )
