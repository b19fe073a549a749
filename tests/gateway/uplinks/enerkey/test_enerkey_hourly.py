"""Hourly readings from stored samples: exact, interpolated within the gap, never invented."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from core.sample import Sample
from gateway.store.database import Store
from gateway.timefmt import HOUR_MS
from gateway.uplinks.enerkey.hourly import Event, Gap, HourlyReadings, HourReading

CHANNEL = "energy_active_import"
GAP_MS = 15 * 60_000
#: 2024-06-01T00:00:00Z
T0 = 1_717_200_000_000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def linear(ts_ms: int) -> float:
    """A counter at a steady 7.2 kW: Wh = 1e6 + 2 Wh per second."""
    return 1_000_000.0 + (ts_ms - T0) / 1000 * 2.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "queue.db") as store:
        yield store


def write(store: Store, times: list[int], counter: Callable[[int], float]) -> None:
    ids = store.append([Sample("m1", ts, {CHANNEL: counter(ts)}) for ts in times])
    assert None not in ids


def derive(
    store: Store, *, after: int = 0, next_hour: int | None = None, max_gap: int = GAP_MS
) -> tuple[list[Event], HourlyReadings]:
    readings = HourlyReadings(CHANNEL, max_gap, next_hour)
    events: list[Event] = []
    while batch := store.read("m1", after, 777):
        for stored in batch:
            readings.feed(stored, events)
            after = stored.rowid
    return events, readings


def hours_of(events: list[Event]) -> list[HourReading]:
    return [e for e in events if isinstance(e, HourReading)]


def every(start: int, end: int, step: int) -> list[int]:
    return list(range(start, end, step))


def test_linear_counter_is_read_exactly_at_every_boundary(store: Store) -> None:
    # Samples every 60 s, 7 s after the minute: no sample ever lies on an hour boundary.
    write(store, every(T0 + 7_000, T0 + 6 * HOUR_MS + 30_000, 60_000), linear)
    events, _ = derive(store)
    readings = hours_of(events)
    assert [r.hour_ms for r in readings] == [T0 + h * HOUR_MS for h in range(1, 7)]
    assert len(readings) == len(events)  # no gap
    for reading in readings:
        assert not reading.exact
        assert reading.value == pytest.approx(linear(reading.hour_ms), abs=1e-6)


def test_interpolation_error_of_a_curved_counter_stays_within_the_bound(store: Store) -> None:
    # Power swings between 0 and 20 kW over 40 minutes: E'' is bounded by P_max * omega.
    omega = 2 * math.pi / (40 * 60_000)

    def counter(ts: int) -> float:
        t = ts - T0
        return 5e5 + 10_000 / 3_600_000 * (t - math.sin(omega * t) / omega)

    step = 90_000
    write(store, every(T0 + 13_000, T0 + 12 * HOUR_MS, step), counter)
    readings = hours_of(derive(store)[0])
    assert len(readings) == 11
    bound = step**2 / 8 * (10_000 / 3_600_000 * omega)  # h^2/8 * max|E''|
    worst = max(abs(r.value - counter(r.hour_ms)) for r in readings)
    assert 0 < worst <= bound


def test_a_sample_on_the_boundary_is_taken_as_is(store: Store) -> None:
    write(store, every(T0, T0 + 3 * HOUR_MS + 1, 15 * 60_000), linear)
    readings = hours_of(derive(store)[0])
    assert [(r.hour_ms, r.exact) for r in readings] == [(T0 + h * HOUR_MS, True) for h in range(4)]
    assert all(r.value == linear(r.hour_ms) for r in readings)


def test_nothing_is_extrapolated_past_the_newest_sample(store: Store) -> None:
    write(store, [T0 + 50 * 60_000, T0 + 59 * 60_000], linear)
    events, readings = derive(store)
    assert events == []
    assert readings.next_hour_ms == T0 + HOUR_MS  # pending until a later sample brackets it
    write(store, [T0 + 61 * 60_000], linear)
    events, _ = derive(store)
    assert [r.hour_ms for r in hours_of(events)] == [T0 + HOUR_MS]


def test_a_five_hour_outage_leaves_its_boundaries_out_and_reports_them(store: Store) -> None:
    before = every(T0 + 7_000, ms("2024-06-01T10:07:00+00:00") + 1, 60_000)
    after = every(ms("2024-06-01T15:10:00+00:00"), ms("2024-06-01T17:30:00+00:00"), 60_000)
    write(store, before + after, linear)
    events, _ = derive(store)
    gaps = [e for e in events if isinstance(e, Gap)]
    assert len(gaps) == 1
    gap = gaps[0]
    assert (gap.first_hour_ms, gap.last_hour_ms, gap.hours) == (
        ms("2024-06-01T11:00:00+00:00"),
        ms("2024-06-01T15:00:00+00:00"),
        5,
    )
    assert (gap.before_ms, gap.after_ms, gap.reason) == (before[-1], after[0], "no samples")
    hours = [r.hour_ms for r in hours_of(events)]
    assert hours == [T0 + h * HOUR_MS for h in (*range(1, 11), 16, 17)]


def test_a_short_outage_within_the_tolerance_is_interpolated(store: Store) -> None:
    # 11:52:30 .. 12:07:30 is exactly 15 min: bracketed. 12:52 .. 13:07:00.001 is not.
    times = [
        ms("2024-06-01T11:50:00+00:00"),
        ms("2024-06-01T11:52:30+00:00"),
        ms("2024-06-01T12:07:30+00:00"),
        ms("2024-06-01T12:52:00+00:00"),
        ms("2024-06-01T13:07:00.001+00:00"),
    ]
    write(store, times, linear)
    events, _ = derive(store)
    assert [type(e).__name__ for e in events] == ["HourReading", "Gap"]
    first = events[0]
    assert isinstance(first, HourReading)
    assert first.hour_ms == ms("2024-06-01T12:00:00+00:00")
    assert first.value == pytest.approx(linear(first.hour_ms), abs=1e-6)


def test_a_counter_that_goes_down_is_not_interpolated(store: Store) -> None:
    write(store, [T0 + 55 * 60_000, T0 + 65 * 60_000], lambda ts: 2e6 - (ts - T0) / 1000)
    events, _ = derive(store)
    assert len(events) == 1
    assert isinstance(events[0], Gap)
    assert events[0].reason == "counter decreased"


@pytest.mark.parametrize(
    ("local_day", "hours"),
    [("2024-03-31", 23), ("2024-10-27", 25), ("2024-06-01", 24)],
    ids=["spring-forward", "fall-back", "summer"],
)
def test_dst_changes_neither_create_nor_lose_hours(
    store: Store, local_day: str, hours: int
) -> None:
    """EnerKey gets UTC hours: a local day has 23 or 25 of them, every one exactly once."""
    helsinki = ZoneInfo("Europe/Helsinki")
    start = datetime.fromisoformat(f"{local_day}T00:00:00").replace(tzinfo=helsinki)
    end = datetime.fromisoformat(f"{local_day}T23:59:59").replace(tzinfo=helsinki)
    start_ms = int(start.timestamp() * 1000)
    end_ms = int(end.timestamp() * 1000) + 1000
    write(store, every(start_ms - HOUR_MS + 9_000, end_ms + HOUR_MS, 60_000), linear)
    readings = hours_of(derive(store)[0])
    in_day = [r.hour_ms for r in readings if start_ms <= r.hour_ms < end_ms]
    assert len(in_day) == hours
    assert all(b - a == HOUR_MS for a, b in itertools.pairwise(in_day))
    local_hours = [datetime.fromtimestamp(h / 1000, UTC).astimezone(helsinki) for h in in_day]
    assert all(t.minute == 0 and t.second == 0 for t in local_hours)
    assert len({t.utcoffset() for t in local_hours}) == (1 if hours == 24 else 2)


def test_resuming_from_any_event_decides_the_same_later_events(store: Store) -> None:
    """An uplink commits (event.cursor, event's last hour + 1 h): a restart from there must
    see exactly the events that followed, whatever event it stopped after."""
    times = (
        every(T0 + 7_000, T0 + 3 * HOUR_MS, 60_000)
        + every(T0 + 5 * HOUR_MS + 30_000, T0 + 6 * HOUR_MS, 20 * 60_000)
        + [T0 + 7 * HOUR_MS]
        + every(T0 + 7 * HOUR_MS + 600_000, T0 + 9 * HOUR_MS + 1, 600_000)
    )
    write(store, times, linear)
    events, _ = derive(store, max_gap=25 * 60_000)
    assert any(isinstance(e, Gap) for e in events)
    assert any(isinstance(e, HourReading) and e.exact for e in events)
    for index, event in enumerate(events):
        resumed, _ = derive(
            store, after=event.cursor, next_hour=event.last_hour_ms + HOUR_MS, max_gap=25 * 60_000
        )
        assert resumed == events[index + 1 :], f"resume after event {index}"


def test_samples_without_the_channel_or_with_an_unsynced_clock_are_skipped(store: Store) -> None:
    store.append(
        [
            Sample("m1", T0 + 50 * 60_000, {CHANNEL: 100.0}),
            Sample("m1", T0 + 58 * 60_000, {"voltage_l1": 230.0}),
            Sample("m1", T0 + 59 * 60_000, {CHANNEL: math.nan}),
            Sample("m1", T0 + 61 * 60_000, {CHANNEL: 5.0}, frozenset({"clock_unsynced"})),
            Sample("m1", T0 + 62 * 60_000, {CHANNEL: 112.0}),
        ]
    )
    events, readings = derive(store, max_gap=30 * 60_000)
    assert readings.skipped == 3
    (reading,) = hours_of(events)
    assert reading.value == pytest.approx(100.0 + 12.0 * 10 / 12)
