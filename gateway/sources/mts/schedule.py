"""When an MTS meter is due: its schedule's slots in site-local time, and the catch-up rule.

A meter is due when no test was requested since the most recent slot; so a gateway that was
down at 02:00 requests as soon as it is back (once, not once per missed day: one test reads
back as many days as needed, see `survey_window`).
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

from gateway.sources.mts.config import MtsScheduleConfig
from gateway.timefmt import utc_datetime, zone


def last_slot_ms(now_ms: int, schedule: MtsScheduleConfig, timezone: str) -> int:
    """The most recent slot at or before `now_ms`."""
    if schedule.every_secs is not None:
        every_ms = round(schedule.every_secs * 1000)
        return now_ms - now_ms % every_ms
    assert schedule.daily_at is not None
    tz = zone(timezone)
    local = utc_datetime(now_ms).astimezone(tz)
    day = local.date()
    for back in range(3):
        slot = _local_ms(day - timedelta(days=back), schedule, timezone)
        if slot <= now_ms:
            return slot
    raise AssertionError("unreachable: a daily slot lies within three days")


def next_slot_ms(now_ms: int, schedule: MtsScheduleConfig, timezone: str) -> int:
    """The first slot strictly after `now_ms`."""
    if schedule.every_secs is not None:
        every_ms = round(schedule.every_secs * 1000)
        return (now_ms // every_ms + 1) * every_ms
    last = last_slot_ms(now_ms, schedule, timezone)
    day = utc_datetime(last).astimezone(zone(timezone)).date()
    for ahead in range(1, 4):
        slot = _local_ms(day + timedelta(days=ahead), schedule, timezone)
        if slot > now_ms:
            return slot
    raise AssertionError("unreachable: a daily slot lies within three days")


def _local_ms(day: date, schedule: MtsScheduleConfig, timezone: str) -> int:
    """The slot on a local day; a time skipped by DST is taken with the earlier offset."""
    assert schedule.daily_at is not None
    local = datetime.combine(day, schedule.daily_at, tzinfo=zone(timezone))
    return math.floor(local.timestamp() * 1000)


def survey_window(
    now_ms: int, newest_ms: int | None, survey_days: int, max_catchup_days: int
) -> tuple[str | None, int]:
    """(surveyDate or None, surveyDays) for a test requested at `now_ms`.

    Normally surveyDate is left out (MTS then reads `survey_days` days back). When the newest
    stored period is older than that, the test reads from its day (UTC, as MTS's dates),
    through today, at most `max_catchup_days` days: an outage is filled by one test.
    """
    if survey_days == 0 or newest_ms is None:
        return None, survey_days
    today = datetime.fromtimestamp(now_ms / 1000, UTC).date()
    since = datetime.fromtimestamp(newest_ms / 1000, UTC).date()
    if (today - since).days <= survey_days:
        return None, survey_days
    start = max(since, today - timedelta(days=max_catchup_days - 1))
    return start.isoformat(), (today - start).days + 1
