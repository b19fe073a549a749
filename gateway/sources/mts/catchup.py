"""Catching up after an outage in tests MTS accepts: chunks of days that shrink on refusal.

MTS limits "the maximum number of survey days requested per test" to a value its document
leaves "to be decided". One test of up to `max_catchup_days` (31) was refused with 400 and
the same request was sent again every day, for ever. Now:

Invariants (per meter, in memory; a restart starts again from the newest stored period):
1. A catch-up test reads at most `chunk` days (`catchup_chunk_days` at start) from where the
   last completed chunk ended (or the newest stored day), through today at the latest.
2. A completed chunk that did not reach today makes the next chunk due at once (no wait for
   the next slot); one that reached today ends the catch-up.
3. A refused catch-up test of more than one day halves the chunk (kept for the meter) and the
   smaller test is due at once; a refused one-day test is reported for a human (the caller
   alerts) and waits for the next slot, as a refused normal test does.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple

from gateway.sources.mts.schedule import survey_window


class _Asked(NamedTuple):
    start: date
    days: int
    today: date


class CatchUp:
    def __init__(self, chunk_days: int, max_catchup_days: int) -> None:
        self._chunk_days = chunk_days
        self._max_catchup_days = max_catchup_days
        self._chunk: dict[str, int] = {}
        self._resume: dict[str, date] = {}
        self._asked: dict[str, _Asked] = {}
        self._due: set[str] = set()

    def chunk(self, meter: str) -> int:
        return self._chunk.get(meter, self._chunk_days)

    def window(
        self, meter: str, now_ms: int, newest_ms: int | None, survey_days: int
    ) -> tuple[str | None, int]:
        """(surveyDate or None, surveyDays) of the next test (invariant 1)."""
        self._due.discard(meter)
        survey_date, days = survey_window(now_ms, newest_ms, survey_days, self._max_catchup_days)
        if survey_date is None:
            self._asked.pop(meter, None)
            self._resume.pop(meter, None)
            return None, days
        today = datetime.fromtimestamp(now_ms / 1000, UTC).date()
        start = max(date.fromisoformat(survey_date), self._resume.get(meter, date.min))
        start = min(start, today)
        days = min((today - start).days + 1, self.chunk(meter))
        self._asked[meter] = _Asked(start, days, today)
        return start.isoformat(), days

    def completed(self, meter: str) -> None:
        """The test of `meter` finished with data (invariant 2)."""
        asked = self._asked.pop(meter, None)
        if asked is None:
            return
        following = asked.start + timedelta(days=asked.days)
        if following <= asked.today:
            self._resume[meter] = following
            self._due.add(meter)
        else:
            self._resume.pop(meter, None)

    def refused(self, meter: str) -> str | None:
        """The test of `meter` was refused (400): what happens next when it shrinks
        (invariant 3); None when it was not a catch-up test of more than one day."""
        asked = self._asked.pop(meter, None)
        if asked is None or asked.days <= 1:
            return None
        smaller = max(1, asked.days // 2)
        self._chunk[meter] = smaller
        self._due.add(meter)
        return (
            f"MTS refused a catch-up test of {asked.days} survey days from {asked.start}; "
            f"asking for {smaller} day(s) at a time"
        )

    def due_now(self, meter: str) -> bool:
        return meter in self._due
