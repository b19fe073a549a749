"""The daily call budget and the two-key ring, on a fake clock."""

from __future__ import annotations

import asyncio
import bisect
import itertools
from datetime import date

import pytest

from gateway.uplinks.enerkey.config import EnerKeyApiKeyConfig
from gateway.uplinks.enerkey.keys import KeyRing
from gateway.uplinks.enerkey.rate_budget import RateBudget
from tests.helpers.clock import ManualClock

DAY = 86_400.0


def budget_clock() -> ManualClock:
    """Virtual time that moves only when someone sleeps (no real waiting); the budget reads
    monotonic time, which starts at 1000 s."""
    return ManualClock(1.7e9 + 1_000.0, monotonic=1_000.0)


def max_in_any_window(starts: list[float], window: float) -> int:
    worst = 0
    for index, start in enumerate(starts):
        end = bisect.bisect_left(starts, start + window)
        worst = max(worst, end - index)
    return worst


async def test_many_meters_never_exceed_the_daily_limit_in_any_24_hours() -> None:
    clock = budget_clock()
    budget = RateBudget(40_000, 100, clock)
    starts: list[float] = []
    stop_at = clock.monotonic() + 2 * DAY

    async def meter() -> None:
        while clock.monotonic() < stop_at:
            await budget.acquire()
            starts.append(clock.monotonic())

    await asyncio.gather(*(meter() for _ in range(30)))
    assert len(starts) > 70_000  # the budget is used, not wasted
    assert max_in_any_window(sorted(starts), DAY) <= 40_000
    assert budget.calls_in_window() <= 40_000
    # Spread out: after the burst, calls come at the steady interval (~2.17 s), not in clumps.
    gaps = [b - a for a, b in itertools.pairwise(starts[200:1201])]
    assert min(gaps) == pytest.approx(budget.steady_interval_secs)


async def test_a_burst_goes_at_once_then_calls_are_spread() -> None:
    clock = budget_clock()
    budget = RateBudget(1000, 10, clock, window_secs=990.0)
    t0 = clock.monotonic()
    for _ in range(10):
        await budget.acquire()
    assert clock.monotonic() == t0
    await budget.acquire()
    assert clock.monotonic() == pytest.approx(t0 + 1.0)  # (1000 - 10) / 990 s = 1 call per second


async def test_the_servers_count_withdraws_the_burst_and_zero_waits() -> None:
    clock = budget_clock()
    budget = RateBudget(1000, 10, clock, window_secs=990.0)
    budget.observe("A", 50)  # at or below low water (100): steady pace only
    t0 = clock.monotonic()
    await budget.acquire()
    await budget.acquire()
    assert clock.monotonic() == pytest.approx(t0 + 1.0)
    budget.observe("A", 0)
    before = clock.monotonic()
    await budget.acquire()
    assert clock.monotonic() >= before + budget.steady_interval_secs
    assert budget.remaining == {"A": 0}
    budget.observe("A", 900)  # the server has room again: the burst comes back as tokens refill
    clock.advance(100)
    before = clock.monotonic()
    for _ in range(5):
        await budget.acquire()
    assert clock.monotonic() == before


async def test_a_429_blocks_every_caller_until_retry_after() -> None:
    clock = budget_clock()
    budget = RateBudget(1000, 10, clock)
    budget.block(42.0)
    t0 = clock.monotonic()
    await asyncio.gather(budget.acquire(), budget.acquire())
    assert clock.monotonic() == pytest.approx(t0 + 42.0)


def test_a_burst_as_large_as_the_limit_is_refused() -> None:
    with pytest.raises(ValueError):
        RateBudget(100, 100, budget_clock())


# -- keys ---------------------------------------------------------------------------------------


def ring(*keys: EnerKeyApiKeyConfig, today: date = date(2025, 6, 15)) -> KeyRing:
    return KeyRing(list(keys), today=lambda: today)


def key(secret: str, start: str | None = None, end: str | None = None) -> EnerKeyApiKeyConfig:
    return EnerKeyApiKeyConfig.model_validate(
        {"key": secret, "valid_from": start, "valid_until": end}
    )


def test_the_key_inside_its_dates_is_used_and_kept() -> None:
    keys = ring(key("a", end="2025-06-14"), key("b", start="2025-06-01"))
    current = keys.current()
    assert current is not None and current.label == "B"
    keys = ring(key("a", end="2025-06-15"), key("b", start="2025-06-01"))
    current = keys.current()
    assert current is not None and current.label == "A"  # valid_until is inclusive


def test_a_refused_key_switches_to_the_other_and_both_refused_is_none() -> None:
    keys = ring(key("a"), key("b"))
    first = keys.current()
    assert first is not None and first.label == "A"
    assert keys.refuse(first)
    assert not keys.refuse(first)  # reported once
    second = keys.current()
    assert second is not None and second.label == "B"
    keys.refuse(second)
    assert keys.current() is None
    assert keys.refused_labels() == ["A", "B"]
    keys.reset()  # a probe: the key used last is tried first, then the other
    again = keys.current()
    assert again is not None and again.label == "B"


def test_keys_outside_their_dates_are_still_tried_when_no_key_is_inside() -> None:
    keys = ring(key("a", end="2025-01-01"), key("b", end="2025-02-01"))
    current = keys.current()
    assert current is not None and current.label == "A"
    assert keys.outside_dates() == ["A", "B"]


def test_a_key_never_shows_in_its_repr() -> None:
    keys = ring(key("super-secret-key-value"))
    assert "super-secret-key-value" not in repr(keys.keys)


async def test_a_restored_budget_goes_on_where_it_stopped() -> None:
    """The burst spent before a restart is not given again after it (issue 14 #14): a
    snapshot taken at the wall clock, restored later, refills only by the time in between."""
    clock = budget_clock()
    budget = RateBudget(1000, 10, clock, window_secs=990.0)
    for _ in range(10):
        await budget.acquire()
    budget.block(30.0)
    snapshot = budget.snapshot()
    clock.advance(5.0)  # the restart
    again = RateBudget(1000, 10, clock, window_secs=990.0)
    again.restore(snapshot)
    assert again.calls_in_window() == 10
    t0 = clock.monotonic()
    await again.acquire()
    assert clock.monotonic() == pytest.approx(t0 + 25.0)  # the 429's block is kept too
    clock.advance(990.0)
    assert again.calls_in_window() == 0
