"""What the PTS uplink tells: per system, window, state, chosen reading, quota and last
validation, for `uplinks/pts/state` (health facts) and `meter-gateway pts status`.

From the local store and memory only: rendering a status never calls PTS.
"""

from __future__ import annotations

from typing import Any

from gateway.uplinks.pts.ledger import NEEDS_HUMAN, PENDING, PtsSubmission
from gateway.uplinks.pts.samples import choose
from gateway.uplinks.pts.state import PtsContext, SystemState
from gateway.uplinks.pts.window import Reading, Window, eastern, last_closed_window, submit_at


class Status:
    """Renders the uplink's facts and report (gateway.uplinks.pts.uplink publishes them)."""

    def __init__(self, ctx: PtsContext) -> None:
        self._ctx = ctx

    def base_facts(self) -> dict[str, Any]:
        client = self._ctx.client
        return {
            "environment": self._ctx.config.environment,
            "api": self._ctx.config.api_root,
            "clock_trusted": True,
            # "API Key may be invalidated for abuse": every call is counted, per Eastern day.
            "calls_today": {
                "day": client.calls_day,
                "total": sum(client.calls_today.values()),
                "by_operation": dict(client.calls_today),
            },
            "unexpected_answers": client.unexpected_answers,
        }

    def publish_untrusted(self) -> None:
        """The facts while the wall clock is untrusted (nothing else is known then)."""
        self._ctx.uplink_health.facts = {**self.base_facts(), "clock_trusted": False}

    async def publish(self, now: int) -> None:
        report = await self.report(now)
        self._ctx.uplink_health.facts = {**self.base_facts(), **report}

    async def report(self, now: int) -> dict[str, Any]:
        """Per system: window, state, chosen reading, ledger and last validation (local only)."""
        ctx = self._ctx
        window = ctx.window_at(now)
        shown = window or last_closed_window(now, *ctx.days)
        upcoming = ctx.next_window(now)
        systems: dict[str, Any] = {}
        for system in ctx.systems:
            rows = await ctx.rows(system, shown.period.key)
            counted = [row for row in rows if not row.test]
            quota, override = await ctx.quota(system, shown.period.key)
            chosen = await choose(
                ctx.astore,
                system,
                shown,
                min(now, shown.close_ms - 1),
                decimals=ctx.config.meter_value_decimals,
            )
            reading = None if chosen is None else chosen[0]
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
                "submit_at": eastern(submit_at(shown, ctx.config.submit_after_days)),
                "state": self._state(
                    system,
                    window=shown,
                    rows=counted,
                    reading=reading,
                    now=now,
                    is_open=window is not None,
                ),
                "reading": None if reading is None else reading.as_json(),
                "quota": {**quota.as_json(), "override": override},
                "last_validation": None if last is None else _validation(last),
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
        system: SystemState,
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
        if any(status in NEEDS_HUMAN for status in statuses):
            return f"{statuses[-1]}: needs a human"
        if reading is None:
            return "no reading in the window yet"
        if now < submit_at(window, self._ctx.config.submit_after_days):
            return "waiting to submit"
        return "due"


def _validation(row: PtsSubmission) -> dict[str, Any]:
    """A ledger row as the `last_validation` fact."""
    return {
        "test": row.test,
        "status": row.status,
        "notes": row.validation_notes,
        "detail": row.detail,
        "MeterValue": row.meter_value,
        "MeterDate": row.meter_date,
        "at": eastern(row.updated_ms),
    }
