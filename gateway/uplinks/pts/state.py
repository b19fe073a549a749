"""What every part of the PTS uplink shares: each system's state and the uplink's context.

The uplink (gateway.uplinks.pts.uplink) is cut into parts of one job each (submission,
follow-up, missed windows, status); they all work on the same systems, the same ledger and the
same alerts, which live here so that no part reaches into another.

Invariants:
- One SystemState per configured system, for the uplink's lifetime; it holds only what can be
  learnt again (GetSystems, a re-check): what must survive a restart is in the store (the
  ledger, gateway.uplinks.pts.ledger, and the uplink state).
- Every part changes a SystemState or the ledger only under the uplink's lock (each pass and
  each manual action holds it), so two of them never decide on the same system at once.
- An alert given with `alert_once` is given once per key while the process runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Final

from core.health import Health, UplinkHealth
from gateway.store.async_store import AsyncStore
from gateway.uplinks.pts import ledger
from gateway.uplinks.pts.client import FAILED, PASSED, VALIDATING, PtsClient, ReadingInfo
from gateway.uplinks.pts.config import PtsConfig, PtsSystemConfig
from gateway.uplinks.pts.ledger import PtsSubmission, Quota
from gateway.uplinks.pts.rules import echo_tolerance_kwh
from gateway.uplinks.pts.window import Window, next_window, window_at

#: The uplink's one logger: every part logs as gateway.uplinks.pts.uplink (as before the
#: uplink was cut into parts), so log filters and journal searches keep working.
log: Final = logging.getLogger("gateway.uplinks.pts.uplink")

DAY_MS: Final = 86_400_000
HOUR_MS: Final = 3_600_000


@dataclass
class SystemState:
    """One configured system: what GetSystems said, when to poll, why it is blocked."""

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
    #: GetSubmissionStatus polls since the pending submission, and how many of them did not
    #: show it (a `sending` row is not_received only after enough of both: followup).
    status_polls: int = 0
    unseen_polls: int = 0
    #: The outcome of the last ARPostTest (passed, failed, unknown).
    last_test: str | None = None

    @property
    def stream(self) -> str:
        return f"system-{self.fk}"

    @property
    def capacity_kw(self) -> float | None:
        return self.config.capacity_kw or self.pts_capacity_kw

    def poll_after(self, now: int, secs: float) -> None:
        """Ask GetSubmissionStatus again `secs` after `now`."""
        self.next_poll_ms = now + int(secs * 1000)

    def submitted(self, now: int, first_poll_secs: float) -> None:
        """A submission left (or may have): poll from `first_poll_secs`, backing off anew."""
        self.status_polls = self.unseen_polls = 0
        self.poll_after(now, first_poll_secs)

    def polled(self, now: int, first_secs: float, max_secs: float) -> None:
        """One more GetSubmissionStatus poll: the next waits twice as long, up to max_secs."""
        self.status_polls += 1
        self.poll_after(now, min(max_secs, first_secs * 2 ** min(self.status_polls, 30)))


#: "PTS shows nothing for this system" in a batched answer.
_NO_ENTRY: Final = ReadingInfo(0, None, None, None, None, None, "no entry")


def usable(entry: ReadingInfo | None) -> bool:
    """A GetSubmissionStatus entry that names a submission. The service answers for the
    current window only (we only ask while one is open), so its dates are not second-guessed.
    """
    return entry is not None and entry.error is None and entry.value_kwh is not None


def status_name(status: int | None) -> str:
    """The ledger status of a PTS validation status."""
    return {PASSED: "passed", FAILED: "failed", VALIDATING: "validating"}.get(
        status if status is not None else 99, "received"
    )


def has_passed(rows: list[PtsSubmission]) -> bool:
    return any(row.status == "passed" for row in rows)


@dataclass
class PtsContext:
    """The uplink's configuration, store, health, PTS client and systems, for all its parts."""

    name: str
    config: PtsConfig
    astore: AsyncStore
    health: Health
    client: PtsClient
    systems: list[SystemState]
    alerted: set[str] = field(default_factory=set)
    #: One pass's batched GetSubmissionStatus answer (None outside a pass).
    status_cache: dict[int, ReadingInfo] | None = None

    def __post_init__(self) -> None:
        self.uplink_health: UplinkHealth = self.health.uplink(self.name)

    @property
    def days(self) -> tuple[int, int]:
        """(window_days_before, window_days_after): the window rule's arguments."""
        return self.config.window_days_before, self.config.window_days_after

    def window_at(self, now: int) -> Window | None:
        return window_at(now, *self.days)

    def next_window(self, now: int) -> Window:
        return next_window(now, *self.days)

    def alert(self, message: str) -> None:
        self.health.alert(self.name, message)

    def alert_once(self, key: str, message: str) -> None:
        if key not in self.alerted:
            self.alerted.add(key)
            self.alert(message)

    # -- the ledger ---------------------------------------------------------------------------

    async def rows(self, system: SystemState, period: str) -> list[PtsSubmission]:
        """The system's ledger rows of one window, test rows included."""
        return await self.astore.run(ledger.submissions, system.fk, period)

    async def counted(self, system: SystemState, period: str) -> list[PtsSubmission]:
        """The system's ledger rows of one window that can count against the quota."""
        return [row for row in await self.rows(system, period) if not row.test]

    async def update(self, system: SystemState, window: Window, row_id: int, **fields: Any) -> None:
        await self.astore.run(ledger.update, system.fk, window.period.key, row_id, **fields)

    async def quota(self, system: SystemState, period: str) -> tuple[Quota, str | None]:
        """The quota the window's rows use (failed tests too, with count_failed_tests), and
        the reason of the help-desk override of the limits, if one was recorded."""
        rows = await self.rows(system, period)
        max_valid, max_failed, override = await self.astore.run(
            ledger.limits, system.fk, period, self.config.quota_valid, self.config.quota_failed
        )
        statuses = ledger.quota_statuses(rows, count_tests=self.config.count_failed_tests)
        return Quota.count(statuses, max_valid, max_failed), override

    async def submission_status(self, systems: list[SystemState]) -> dict[int, ReadingInfo]:
        """GetSubmissionStatus for `systems`: from the pass's batched call when there is one
        ("will accommodate batching of systems"), else one call for them."""
        if self.status_cache is not None and all(s.fk in self.status_cache for s in systems):
            return self.status_cache
        if self.status_cache is not None:
            # Not batched yet: ask for every system of the pass at once, keep the answer.
            fks = sorted({s.fk for s in self.systems} | {s.fk for s in systems})
            answer = await self.client.submission_status(fks)
            self.status_cache = {fk: answer[fk] for fk in answer}
            self.status_cache.update({fk: _NO_ENTRY for fk in fks if fk not in answer})
            return self.status_cache
        return await self.client.submission_status([s.fk for s in systems])

    @property
    def echo_tolerance(self) -> float:
        """How far PTS's echo of a MeterValue may be from ours (gateway.uplinks.pts.rules)."""
        return echo_tolerance_kwh(self.config.meter_value_decimals)
