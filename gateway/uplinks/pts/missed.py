"""Missed windows: the alert before a window closes without a Passed reading, and the report
after one did.

A window without a Passed reading costs the month's SRECs, so a human must hear of it while
there is still time, and again, with the reason, when it is too late.

Invariants:
- From missed_window_alert_hours before the close, a system without a Passed reading raises
  one alert per window (uplink state `closing_alerted:<fk_system>` = the period, so a restart
  does not repeat it).
- Every window that closed without a Passed reading is reported once (uplink state
  `closed_reported:<fk_system>` = the close of the last window looked at; before that, from the
  gateway's first run), loudly, with the outage, when the gateway was not running across the
  whole window.
"""

from __future__ import annotations

from gateway.uplinks.pts.ledger import PtsSubmission
from gateway.uplinks.pts.samples import choose
from gateway.uplinks.pts.state import HOUR_MS, PtsContext, SystemState, has_passed
from gateway.uplinks.pts.window import Window, closed_windows, eastern


class MissedWindows:
    """Alerts about windows closing or closed without a Passed reading."""

    def __init__(self, ctx: PtsContext) -> None:
        self._ctx = ctx

    async def closing_alert(self, system: SystemState, window: Window, now: int) -> None:
        """Alert (once) when `window` closes soon and the system has no Passed reading."""
        ctx = self._ctx
        alert_from = window.close_ms - int(ctx.config.missed_window_alert_hours * HOUR_MS)
        if now < alert_from:
            return
        key = f"closing_alerted:{system.fk}"
        if await ctx.astore.state(ctx.name, key) == window.period.key:
            return
        rows = await ctx.counted(system, window.period.key)
        if has_passed(rows):
            return
        hours = (window.close_ms - now) / HOUR_MS
        ctx.alert(
            f"PTS window for {window.period.label()} closes at {eastern(window.close_ms)} "
            f"Eastern (in {hours:.0f} h) and system {system.fk} (meter {system.meter}) has no "
            f"passed reading: {await self._why_not_passed(system, window, rows, now)}. "
            "If none passes, PTS estimates the month and its SRECs may be forfeited",
        )
        await ctx.astore.put_state(ctx.name, {key: window.period.key})

    async def _why_not_passed(
        self, system: SystemState, window: Window, rows: list[PtsSubmission], now: int
    ) -> str:
        ctx = self._ctx
        if system.active is False:
            return f"the system is not active in PTS ({system.error})"
        if rows:
            return _last_submission(rows[-1])
        if system.blocked_period == window.period.key and system.problems:
            return "the reading failed a check: " + "; ".join(system.problems)
        if await choose(ctx.astore, system, window, now) is None:
            return f"no sample of meter {system.meter} in the window (meter or gateway offline?)"
        if ctx.uplink_health.paused_reason:
            return ctx.uplink_health.paused_reason
        return "not submitted yet"

    async def report_closed_windows(
        self, now: int, *, first_run_ms: int, last_seen_ms: int | None, started_ms: int
    ) -> None:
        """Once per window that closed since we last looked: say if it ended without a pass.

        `first_run_ms`: the gateway's first run; `last_seen_ms`: the last heartbeat of the
        previous run (None: none); `started_ms`: when this run started.
        """
        ctx = self._ctx
        for system in ctx.systems:
            key = f"closed_reported:{system.fk}"
            seen = await ctx.astore.state(ctx.name, key)
            after = int(seen) if seen else first_run_ms
            windows = closed_windows(after, now, *ctx.days)
            for window in windows:
                rows = await ctx.counted(system, window.period.key)
                if has_passed(rows):
                    continue
                message = (
                    f"PTS window for {window.period.label()} ({window.describe()}) CLOSED "
                    f"without a passed reading for system {system.fk} (meter {system.meter})"
                )
                outage = last_seen_ms
                if outage is not None and outage < window.close_ms <= started_ms:
                    across = " across the WHOLE window" if outage < window.open_ms else ""
                    message += (
                        f": the gateway was NOT RUNNING{across} (last seen "
                        f"{eastern(outage)}, back {eastern(started_ms)} Eastern)"
                    )
                elif rows:
                    message += ": " + _last_submission(rows[-1])
                message += (
                    ". PTS will estimate the month; ask the MassCEC help desk (pts@masscec.com) "
                    "about a late reading"
                )
                ctx.alert(message)
            if windows:
                await ctx.astore.put_state(ctx.name, {key: str(windows[-1].close_ms)})


def _last_submission(row: PtsSubmission) -> str:
    """`last submission failed (the notes)`."""
    text = f"last submission {row.status}"
    if row.validation_notes:
        text += f" ({row.validation_notes})"
    return text
