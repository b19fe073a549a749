"""Render stored UTC instants the way each destination wants them.

The store keeps integer UTC milliseconds; only the edge that talks to a service turns them into
text, with `zoneinfo` (never a fixed offset), so DST changes follow the tz database.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The IANA zone `name` (cached: ZoneInfo lookups read tzdata files)."""
    return ZoneInfo(name)


def utc_datetime(ts_ms: int) -> datetime:
    """UTC datetime of integer epoch milliseconds, exact (no float rounding)."""
    return _EPOCH + timedelta(milliseconds=ts_ms)


def local_iso8601_ms(ts_ms: int, tz: str | tzinfo) -> str:
    """`ts_ms` as site-local time with milliseconds and the UTC offset in force at that instant.

    Example: `2016-02-10T21:45:31.070+11:00` (Australia/Sydney). The offset always comes from
    the zone at that very instant, so in the repeated autumn hour the two readings of the same
    wall-clock time differ by their offset (Europe/Berlin: `02:30:00.000+02:00`, one hour later
    `02:30:00.000+01:00`): the rendered timestamps stay strictly increasing as instants although
    the wall-clock part repeats. Offsets that are not whole minutes (historic local mean time) are
    rounded to the minute and the local part shifted with them, so the text still names the
    same instant.
    """
    tzi = zone(tz) if isinstance(tz, str) else tz
    seconds, millis = divmod(ts_ms, 1000)
    local = datetime.fromtimestamp(seconds, tzi)  # integer seconds: exact
    offset = local.utcoffset() or timedelta(0)
    if offset.seconds % 60 or offset.microseconds:
        return _rounded_offset(ts_ms, tzi, offset)
    minutes = offset.days * 1440 + offset.seconds // 60
    sign = "+"
    if minutes < 0:
        sign, minutes = "-", -minutes
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03d%s%02d:%02d" % (  # noqa: UP031 (hot path)
        local.year,
        local.month,
        local.day,
        local.hour,
        local.minute,
        local.second,
        millis,
        sign,
        minutes // 60,
        minutes % 60,
    )


def _rounded_offset(ts_ms: int, tzi: tzinfo, offset: timedelta) -> str:
    """Local mean time offsets with seconds: round to the minute, shift the local part too."""
    minutes = round(offset.total_seconds() / 60)
    local = (utc_datetime(ts_ms) + timedelta(minutes=minutes)).replace(tzinfo=None)
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{local.isoformat(timespec='milliseconds')}{sign}{hours:02d}:{mins:02d}"


def utc_iso8601_ms(ts_ms: int) -> str:
    """`ts_ms` in UTC with milliseconds and a `Z` suffix, e.g. `2024-01-31T23:00:00.000Z`."""
    return utc_datetime(ts_ms).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_iso8601_ms(text: str) -> int:
    """Epoch milliseconds of an ISO 8601 timestamp that carries an offset (or `Z`).

    Raises ValueError for a naive timestamp: without an offset the instant is ambiguous.
    """
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without offset: {text!r}")
    delta = parsed - _EPOCH
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def local_naive_iso8601(ts_ms: int, tz: str | tzinfo) -> str:
    """`ts_ms` as local wall-clock time to the second, WITHOUT offset: `2026-01-31T23:59:42`.

    For services that fix the zone out of band (MassCEC PTS: Eastern time). Milliseconds are
    truncated, never rounded up, so an instant at or before midnight never renders after it.
    """
    tzi = zone(tz) if isinstance(tz, str) else tz
    local = datetime.fromtimestamp(ts_ms // 1000, tzi)
    return local.replace(tzinfo=None).isoformat(timespec="seconds")


def parse_local_naive(text: str, tz: str | tzinfo) -> int:
    """Epoch milliseconds of a naive local `YYYY-MM-DDTHH:MM:SS[.fff]` in zone `tz`.

    In the repeated autumn hour the first occurrence (daylight time) is taken; a time in the
    skipped spring hour is read with the offset in force before the change (zoneinfo's rule).
    Raises ValueError for a timestamp that carries an offset: it would be ambiguous which wins.
    """
    tzi = zone(tz) if isinstance(tz, str) else tz
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is not None:
        raise ValueError(f"expected a local time without offset: {text!r}")
    delta = parsed.replace(tzinfo=tzi, fold=0) - _EPOCH
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


#: One hour in milliseconds: hourly services (EnerKey) work on UTC hour boundaries.
HOUR_MS = 3_600_000


def floor_hour_ms(ts_ms: int) -> int:
    """The UTC hour boundary at or before `ts_ms` (local DST never adds or removes one)."""
    return ts_ms - ts_ms % HOUR_MS


def ceil_hour_ms(ts_ms: int) -> int:
    """The UTC hour boundary at or after `ts_ms`."""
    return -(-ts_ms // HOUR_MS) * HOUR_MS


def utc_iso8601(ts_ms: int) -> str:
    """`ts_ms` in UTC to the second with a `Z` suffix, e.g. `2024-03-31T01:00:00Z`.

    Milliseconds are truncated (an hour boundary has none).
    """
    return utc_datetime(ts_ms - ts_ms % 1000).replace(tzinfo=None).isoformat() + "Z"


def local_iso8601(ts_ms: int, tz: str | tzinfo) -> str:
    """`ts_ms` as site-local time to the second with its offset, e.g. `2024-03-31T04:00:00+03:00`.

    Same rules as local_iso8601_ms (offset of that very instant), milliseconds truncated.
    """
    text = local_iso8601_ms(ts_ms - ts_ms % 1000, tz)
    return text[:19] + text[23:]
