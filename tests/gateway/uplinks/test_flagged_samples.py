"""What EnerKey and PTS do with flagged samples (gateway.counters, gateway.clock.hold): never
negative or absurd consumption, never a month-end reading at an unknown time, never a
counter-flagged reading submitted — and each refusal reported with its numbers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from core.flags import CLOCK_UNSYNCED, COUNTER_JUMP, COUNTER_RESET
from core.health import Health
from core.sample import Sample
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from gateway.uplinks.pts.window import kwh
from tests.fakes.enerkey import FakeEnerKey
from tests.fakes.pts import FakePts
from tests.gateway.uplinks.enerkey.test_enerkey_uplink import (
    CHANNEL,
    MIN,
    T0,
    counter,
    hour,
    running,
    uplink_for,
)
from tests.gateway.uplinks.pts.pts_helpers import (
    alerts,
    eastern_s,
    energy_wh,
    ledger,
    make_config,
    make_uplink,
)
from tests.helpers.clock import ManualClock

#: The electrician swaps the meter at 02:30 UTC (EnerKey tests) — its register starts anew.
SWAP = hour(2) + 30 * MIN


@pytest.fixture
async def astore(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    astore = AsyncStore(Store(tmp_path / "queue.db"))
    yield astore
    await astore.aclose()


def swapped_meter(
    new_start_wh: float, flag: str | None, swap_ms: int = SWAP
) -> Callable[[int], Sample]:
    """Samples of a steady 7.2 kW load whose meter is replaced at `swap_ms` by one reading
    `new_start_wh`; the first sample of the new meter carries `flag` (as the poller sets it)."""

    def sample(ts: int) -> Sample:
        if ts < swap_ms:
            return Sample("incomer", ts, {CHANNEL: counter(ts)})
        value = new_start_wh + counter(ts) - counter(swap_ms)
        flags = frozenset({flag}) if flag is not None and ts == swap_ms else frozenset()
        return Sample("incomer", ts, {CHANNEL: value}, flags)

    return sample


async def store_minutes(astore: AsyncStore, make: Callable[[int], Sample], end: int) -> None:
    """A sample every minute, 7 s after it, from T0 to `end` (the swap on a sample)."""
    items = [make(ts) for ts in range(T0 + 7_000, end, MIN)]
    assert None not in await astore.append(items)


@pytest.mark.parametrize(
    ("new_start_wh", "flag"),
    [(50.0, COUNTER_RESET), (80_000_000.0, COUNTER_JUMP)],
    ids=["new meter lower", "new meter higher"],
)
async def test_enerkey_consumption_leaves_out_the_hour_in_which_the_counter_broke(
    fake_enerkey: FakeEnerKey, astore: AsyncStore, new_start_wh: float, flag: str
) -> None:
    await store_minutes(astore, swapped_meter(new_start_wh, flag, SWAP + 7_000), hour(5) + MIN)
    health = Health()
    meters = {"incomer": {"meter_id": 4711, "mode": "consumption", "unit": "kWh"}}
    async with running(uplink_for(fake_enerkey, astore, health, meters)):
        await fake_enerkey.wait_hours(4711, 3, "consumption")

    # 01-02, then 02-03 (the swap) is left out, 03-04 and 04-05 come from the new meter alone
    assert fake_enerkey.hours(4711, "consumption") == pytest.approx(
        {hour(1): 7.2, hour(3): 7.2, hour(4): 7.2}, abs=1e-6
    )
    assert health.uplink("enerkey").facts["hours_missing"] == {"incomer": 1}
    reason = flag.replace("_", " ")
    (alert,) = [a.message for a in health.alerts if reason in a.message]
    assert "hour ending 2024-06-01T03:00:00Z" in alert and "left out" in alert


@pytest.mark.parametrize(
    ("new_start_wh", "flag"),
    [(50.0, COUNTER_RESET), (80_000_000.0, COUNTER_JUMP)],
    ids=["new meter lower", "new meter higher"],
)
async def test_enerkey_cumulative_does_not_interpolate_across_a_break_and_says_a_series_starts(
    fake_enerkey: FakeEnerKey, astore: AsyncStore, new_start_wh: float, flag: str
) -> None:
    # The new meter's first sample is 7 s after 03:00; the old meter's last at 02:59:07.
    swap = hour(3) + 7_000
    await store_minutes(astore, swapped_meter(new_start_wh, flag, swap), hour(5) + MIN)
    health = Health()
    async with running(uplink_for(fake_enerkey, astore, health, {"incomer": 4711})):
        await fake_enerkey.wait_hours(4711, 4)

    sent = fake_enerkey.hours(4711)
    assert sorted(sent) == [hour(1), hour(2), hour(4), hour(5)]  # 03:00 not invented
    assert sent[hour(2)] == pytest.approx(counter(hour(2)) / 1000, abs=1e-6)
    new_series_kwh = (new_start_wh + counter(hour(4)) - counter(swap)) / 1000
    assert sent[hour(4)] == pytest.approx(new_series_kwh, abs=1e-6)  # sent as read
    messages = [a.message for a in health.alerts]
    reason = flag.replace("_", " ")
    assert any("03:00:00Z" in m and f"{reason} flagged" in m for m in messages), messages
    assert any("new counter series starts" in m for m in messages), messages


async def test_enerkey_never_uses_a_sample_stamped_by_an_untrusted_clock(
    fake_enerkey: FakeEnerKey, astore: AsyncStore
) -> None:
    def sample(ts: int) -> Sample:
        # around 02:00 the samples carry times the clock could not vouch for
        untimed = hour(2) - 2 * MIN <= ts <= hour(2) + 2 * MIN
        return Sample(
            "incomer",
            ts,
            {CHANNEL: counter(ts) + (5e6 if untimed else 0.0)},  # absurd if ever used
            frozenset({CLOCK_UNSYNCED}) if untimed else frozenset(),
        )

    await store_minutes(astore, sample, hour(3) + MIN)
    health = Health()
    async with running(uplink_for(fake_enerkey, astore, health, {"incomer": 4711})):
        await fake_enerkey.wait_hours(4711, 3)
    # 02:00 interpolated over the 5-minute hole (max gap 15 min) from trusted samples only
    assert fake_enerkey.hours(4711) == pytest.approx(
        {hour(n): counter(hour(n)) / 1000 for n in (1, 2, 3)}, abs=1e-6
    )


# -- PTS ----------------------------------------------------------------------------------------


def pts_samples(flagged_at_s: float, flag: str, *, value_wh: float | None = None) -> list[Sample]:
    """A plausible array every 15 min from Jan 25 to Feb 4; the sample at `flagged_at_s` is
    flagged `flag` (and reads `value_wh` when given)."""
    items = []
    ts = eastern_s(2026, 1, 25)
    while ts < eastern_s(2026, 2, 4):
        flagged = ts == flagged_at_s
        value = value_wh if flagged and value_wh is not None else energy_wh(ts)
        flags = frozenset({flag}) if flagged else frozenset()
        items.append(Sample("pv", int(ts * 1000) + 40, {CHANNEL: value}, flags))
        ts += 900
    return items


async def test_pts_refuses_a_counter_flagged_month_end_reading_for_a_human(
    fake_pts: FakePts, pts_clock: ManualClock, astore: AsyncStore
) -> None:
    midnight = eastern_s(2026, 2, 1)
    # flagged counter_jump although its value would pass every other check: the flag decides
    assert None not in await astore.append(pts_samples(midnight, COUNTER_JUMP))
    health = Health()
    uplink = make_uplink(make_config(fake_pts), astore, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 0, 0, 5)
        await uplink.step()
    finally:
        await uplink.aclose()
    assert fake_pts.count("ARPost") == 0 and fake_pts.count("ARPostTest") == 0
    assert await ledger(astore) == []  # no quota spent
    (alert,) = [a for a in alerts(health) if "NOT submitted" in a]
    value = kwh(energy_wh(midnight))  # as submitted: one decimal, rounded down
    before = kwh(energy_wh(midnight - 900))
    assert f"MeterValue {value:g} kWh at 2026-02-01T00:00:00 is flagged counter_jump" in alert
    assert f"previous sample: {before:g} kWh at 2026-01-31T23:45:00" in alert
    problems = health.uplink("pts").facts["systems"]["1000"]["problems"]
    assert any("counter_jump" in p for p in problems)


async def test_pts_passes_over_samples_stamped_by_an_untrusted_clock(
    fake_pts: FakePts, pts_clock: ManualClock, astore: AsyncStore
) -> None:
    # The sample "at midnight" was stamped by a clock nobody vouched for: not a month end.
    assert None not in await astore.append(
        pts_samples(eastern_s(2026, 2, 1), CLOCK_UNSYNCED, value_wh=1.0)
    )
    uplink = make_uplink(make_config(fake_pts), astore, pts_clock)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 0, 0, 5)
        await uplink.step()
    finally:
        await uplink.aclose()
    expected = round(energy_wh(eastern_s(2026, 1, 31, 23, 45)) / 1000, 3)
    assert [(s.value, s.meter_date) for s in fake_pts.submitted(1000)] == [
        (expected, "2026-01-31T23:45:00")
    ]
