"""Locus components without `latest`, and data that arrives late (issue 14 #17, #18).

The document's own dataavailable example (Step 2 of "Getting started") lists no `latest`
among a field's granularities; such a component used to be asked `gran=latest` for ever (400
each time, no alert). And the position moved past intervals that had no data yet, so a
logger that uploads late was lost, and the interval counter (which feeds PTS and EnerKey)
undercounted for ever. Against the strict fake on the shared fast clock.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.health import Health, MeterState
from gateway.store.async_store import AsyncStore
from tests.fakes.locus import ALL_GRANS, FakeLocus
from tests.fixtures.locus import PV_ROOF, make_fake
from tests.gateway.sources.locus.test_locus_source import (
    ROOF,
    STEP_MS,
    assert_complete_series,
    astore,  # noqa: F401  (the fixture)
    config_for,
    running,
    seed,
    stored,
)
from tests.helpers.clock import ManualClock
from tests.helpers.eventually import eventually

HOUR_MS = 3_600_000


async def test_a_component_without_latest_is_polled_by_interval(
    tmp_path: Path,
    astore: AsyncStore,  # noqa: F811
    locus_clock: ManualClock,
) -> None:
    now_ms = int(locus_clock.time() * 1000)
    seeded = now_ms - now_ms % STEP_MS - HOUR_MS
    seed(astore, "pv-roof", seeded, 100.0)
    health = Health()
    async with make_fake(locus_clock) as fake:
        fake.components[PV_ROOF].granularities = tuple(g for g in ALL_GRANS if g != "latest")
        async with running(config_for(tmp_path, fake, ROOF), astore, health, locus_clock):
            await eventually(lambda: health.meter("pv-roof").reads >= 4, timeout=8.0)
            await eventually(
                lambda: (astore.store.last_ts("pv-roof") or 0) >= seeded + 14 * STEP_MS,
                timeout=8.0,
            )
        assert fake.data_requests("latest") == []  # never asked what it does not offer
        assert fake.statuses.keys() == {200}
    assert_complete_series(stored(astore, "pv-roof")[1:], 1, 100.0)
    assert health.meter("pv-roof").state is MeterState.OK


async def test_a_component_that_cannot_be_read_at_all_is_alerted(
    tmp_path: Path,
    astore: AsyncStore,  # noqa: F811
    locus_clock: ManualClock,
) -> None:
    health = Health()
    async with make_fake(locus_clock) as fake:
        # Only monthly data: the meter's 5min cannot be read, nor latest.
        fake.components[PV_ROOF].granularities = ("monthly", "yearly")
        async with running(config_for(tmp_path, fake, ROOF), astore, health, locus_clock):
            await eventually(lambda: health.alerts, timeout=8.0)
    (alert,) = [a for a in health.alerts if "pv-roof" in a.source]
    assert "no 5min data" in alert.message
    assert health.meter("pv-roof").state is MeterState.OFFLINE


async def test_late_data_is_fetched_and_the_counter_is_whole(
    tmp_path: Path,
    astore: AsyncStore,  # noqa: F811
    locus_clock: ManualClock,
) -> None:
    """A logger missed half an hour and uploads it later: the gap is read again until it
    fills (within `settle_secs`), and nothing after it is stored meanwhile (the store keeps
    time order), so the counter ends up whole."""
    now_ms = int(locus_clock.time() * 1000)
    seeded = now_ms - now_ms % STEP_MS - 2 * HOUR_MS
    seed(astore, "pv-roof", seeded, 0.0)
    health = Health()
    async with make_fake(locus_clock) as fake:
        roof = fake.components[PV_ROOF]
        gap = (seeded + HOUR_MS, seeded + HOUR_MS + 6 * STEP_MS)
        roof.gaps = [gap]  # not uploaded yet
        config = config_for(tmp_path, fake, ROOF, extra="    settle_secs: 6h\n")
        async with running(config, astore, health, locus_clock):
            await eventually(lambda: astore.store.last_ts("pv-roof") == gap[0], timeout=8.0)
            reads = health.meter("pv-roof").reads
            await eventually(lambda: health.meter("pv-roof").reads >= reads + 3, timeout=8.0)
            assert astore.store.last_ts("pv-roof") == gap[0]  # held at the gap
            roof.gaps = []  # the logger uploads
            await eventually(
                lambda: (astore.store.last_ts("pv-roof") or 0) >= gap[1] + 6 * STEP_MS,
                timeout=8.0,
            )
    assert_complete_series(stored(astore, "pv-roof")[1:], 1, 0.0)


async def test_a_gap_older_than_the_settle_window_is_passed_and_counted(
    tmp_path: Path,
    astore: AsyncStore,  # noqa: F811
    fake_locus: FakeLocus,
    locus_clock: ManualClock,
) -> None:
    now_ms = int(locus_clock.time() * 1000)
    seeded = now_ms - now_ms % STEP_MS - 3 * HOUR_MS
    seed(astore, "pv-roof", seeded, 0.0)
    health = Health()
    roof = fake_locus.components[PV_ROOF]
    roof.gaps = [(seeded + STEP_MS, seeded + 3 * STEP_MS)]  # 2 intervals, 3 h ago: for good
    config = config_for(tmp_path, fake_locus, ROOF, extra="    settle_secs: 1h\n")
    async with running(config, astore, health, locus_clock):
        await eventually(
            lambda: (astore.store.last_ts("pv-roof") or 0) >= now_ms - now_ms % STEP_MS,
            timeout=8.0,
        )
    assert health.meter("pv-roof").facts["intervals_missing"] == 2


async def test_a_refused_data_call_is_alerted_not_repeated_quietly(
    tmp_path: Path,
    astore: AsyncStore,  # noqa: F811
    fake_locus: FakeLocus,
    locus_clock: ManualClock,
) -> None:
    """Data calls that Locus answers 400 (seen: 168 x 400 in a week, no alert): alerted once,
    and asked again only after config_recheck_secs (dataavailable first)."""
    health = Health()
    async with running(config_for(tmp_path, fake_locus, ROOF), astore, health, locus_clock):
        await eventually(lambda: health.meter("pv-roof").reads >= 1, timeout=8.0)
        fake_locus.fail_next(1000, 400)
        await eventually(lambda: health.alerts, timeout=8.0)
        await asyncio.sleep(1.0)  # 20 minutes of fast time: backoff would have asked often
        refused = fake_locus.statuses[400]
    (alert,) = [a for a in health.alerts if "pv-roof" in a.source]
    assert "400" in alert.message
    assert refused == 1


async def test_a_web_page_answered_200_moves_nothing(
    tmp_path: Path,
    astore: AsyncStore,  # noqa: F811
    fake_locus: FakeLocus,
    locus_clock: ManualClock,
) -> None:
    """A 200 that is not Locus's JSON object (a captive portal's page) is a counted, retried
    error; the position stays, and the series has no hole (issue 16 #8)."""
    now_ms = int(locus_clock.time() * 1000)
    seeded = now_ms - now_ms % STEP_MS - HOUR_MS
    seed(astore, "pv-roof", seeded, 0.0)
    health = Health()
    fake_locus.page_next(3)
    async with running(config_for(tmp_path, fake_locus, ROOF), astore, health, locus_clock):
        await eventually(
            lambda: (astore.store.last_ts("pv-roof") or 0) >= seeded + 12 * STEP_MS, timeout=8.0
        )
    assert health.meter("pv-roof").errors["garbage"] == 3
    assert_complete_series(stored(astore, "pv-roof")[1:], 1, 0.0)
