"""The PTS uplink month by month: a real temp-dir store, the strict fake on loopback, and a
virtual clock shared by both (no test waits for a real month)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.health import Health
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from gateway.uplinks.pts.window import kwh
from tests.fakes.pts import FakePts
from tests.gateway.uplinks.pts.pts_helpers import (
    alerts,
    counted,
    eastern_s,
    energy_wh,
    feed,
    ledger,
    make_config,
    make_uplink,
)
from tests.helpers.clock import ManualClock


@pytest.fixture
async def astore(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    astore = AsyncStore(Store(tmp_path / "queue.db"))
    yield astore
    await astore.aclose()


async def test_winter_month_end_is_submitted_the_next_day_and_followed_to_passed(
    fake_pts: FakePts, pts_clock: ManualClock, astore: AsyncStore
) -> None:
    await feed(astore, eastern_s(2026, 1, 25), eastern_s(2026, 2, 4))
    health = Health()
    uplink = make_uplink(make_config(fake_pts), astore, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 1, 31, 12)  # window open, month not over
        await uplink.step()
        pts_clock.now = eastern_s(2026, 2, 1, 23, 59)  # month over, but not yet a day
        await uplink.step()
        assert fake_pts.count("ARPost") == 0 and fake_pts.count("ARPostTest") == 0

        pts_clock.now = eastern_s(2026, 2, 2, 0, 0, 5)
        await uplink.step()
        expected_kwh = kwh(energy_wh(eastern_s(2026, 2, 1)))  # one decimal, rounded down
        assert [(s.value, s.meter_date) for s in fake_pts.submitted(1000)] == [
            (expected_kwh, "2026-02-01T00:00:00")
        ]
        assert fake_pts.tests == [
            {"fk_system": 1000, "MeterValue": expected_kwh, "MeterDate": "2026-02-01T00:00:00"}
        ]
        assert counted(await ledger(astore)) == [
            ("auto", "received", expected_kwh, "2026-02-01T00:00:00")
        ]

        pts_clock.now += 120  # PTS still validating
        await uplink.step()
        assert counted(await ledger(astore))[0][1] == "validating"
        pts_clock.now += 600
        await uplink.step()
        assert counted(await ledger(astore))[0][1] == "passed"
        facts = health.uplink("pts").facts["systems"]["1000"]
        assert facts["state"] == "passed"
        assert facts["window"] == {
            "open": "2026-01-27T00:00:00",
            "close": "2026-02-06T00:00:00",
            "is_open": True,
        }
        assert facts["last_validation"]["status"] == "passed"
        assert facts["quota"]["passed"] == 1 and facts["quota"]["max_failed"] == 3

        # Days later: nothing more is sent (one ARPost per window), no alert.
        pts_clock.now = eastern_s(2026, 2, 5, 12)
        await uplink.step()
        assert fake_pts.count("ARPost") == 1
        assert alerts(health) == []
    finally:
        await uplink.aclose()
    # Every call carried both headers (the fake answers 400 otherwise) and none failed.
    assert {call.status for call in fake_pts.calls} == {200}


async def test_summer_month_end_is_rendered_in_daylight_time(
    fake_pts: FakePts, pts_clock: ManualClock, astore: AsyncStore
) -> None:
    fake_pts.systems[1000].last_value = 9000.0
    fake_pts.systems[1000].last_date = "2026-06-30T23:45:00"
    # Samples at :14:30, :29:30, ... so the nearest one is 30 s before midnight EDT.
    await feed(astore, eastern_s(2026, 7, 26, 0, 14, 30), eastern_s(2026, 8, 4))
    uplink = make_uplink(make_config(fake_pts), astore, pts_clock)
    try:
        pts_clock.now = eastern_s(2026, 8, 2, 1)
        await uplink.step()
    finally:
        await uplink.aclose()
    [submission] = fake_pts.submitted(1000)
    assert submission.meter_date == "2026-07-31T23:59:30"  # 03:59:30Z: EDT, not EST
    assert submission.value == kwh(energy_wh(eastern_s(2026, 7, 31, 23, 59, 30)))


async def test_28_day_month_window_and_reading(
    fake_pts: FakePts, pts_clock: ManualClock, astore: AsyncStore
) -> None:
    fake_pts.systems[1000].last_value = 6116.0
    fake_pts.systems[1000].last_date = "2026-02-01T00:00:00"
    await feed(astore, eastern_s(2026, 2, 20), eastern_s(2026, 3, 4), step_s=3600)
    health = Health()
    uplink = make_uplink(make_config(fake_pts), astore, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 2, 24, 0, 30)
        await uplink.step()
        facts = health.uplink("pts").facts["systems"]["1000"]
        assert facts["period"] == "2026-02"
        assert facts["window"]["open"] == "2026-02-24T00:00:00"
        assert facts["submit_at"] == "2026-03-02T00:00:00"
        assert facts["state"] == "waiting to submit"
        pts_clock.now = eastern_s(2026, 3, 2, 0, 1)
        await uplink.step()
    finally:
        await uplink.aclose()
    assert [s.meter_date for s in fake_pts.submitted(1000)] == ["2026-03-01T00:00:00"]


async def test_offline_over_month_end_submits_when_back_inside_the_window(
    fake_pts: FakePts, pts_clock: ManualClock, astore: AsyncStore
) -> None:
    # The gateway ran until Jan 25, was off (no samples, no passes) and is back Feb 3, 09:00.
    await feed(astore, eastern_s(2026, 1, 20), eastern_s(2026, 1, 25))
    health = Health()
    uplink = make_uplink(make_config(fake_pts), astore, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 1, 24, 23)
        await uplink.step()
    finally:
        await uplink.aclose()

    await feed(astore, eastern_s(2026, 2, 3, 9), eastern_s(2026, 2, 3, 9, 20))
    pts_clock.now = eastern_s(2026, 2, 3, 9, 20)
    restarted = make_uplink(make_config(fake_pts), astore, pts_clock, health)
    try:
        await restarted.step()
    finally:
        await restarted.aclose()
    # No sample inside the window before midnight: the first one after it.
    assert [s.meter_date for s in fake_pts.submitted(1000)] == ["2026-02-03T09:00:00"]
    assert alerts(health) == []  # the window is still open: nothing was missed


async def test_unknown_and_inactive_systems_are_reported_not_submitted(
    fake_pts: FakePts, pts_clock: ManualClock, astore: AsyncStore
) -> None:
    await feed(astore, eastern_s(2026, 1, 25), eastern_s(2026, 2, 3))
    await feed(astore, eastern_s(2026, 1, 25), eastern_s(2026, 2, 3), meter="pv2")
    await feed(astore, eastern_s(2026, 1, 25), eastern_s(2026, 2, 3), meter="pv3")
    systems = {
        "pv": {"fk_system": 1000},
        "pv2": {"fk_system": 9999},  # not the organisation's
        "pv3": {"fk_system": 3000},  # inactive
    }
    health = Health()
    uplink = make_uplink(make_config(fake_pts, systems=systems), astore, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 1)
        await uplink.step()
        await uplink.step()
        manual = await uplink.submit(9999)
    finally:
        await uplink.aclose()
    assert [s.fk_system for s in fake_pts.submissions] == [1000]
    assert fake_pts.count("GetSystems") == 1  # at start; the next is due in a day
    texts = alerts(health)
    assert len(texts) == 2  # once each, not once per pass
    assert any("9999" in text and "System not found" in text for text in texts)
    assert any("3000" in text for text in texts)
    assert manual["ok"] is False and "not active" in manual["error"]
    facts = health.uplink("pts").facts["systems"]
    assert facts["9999"]["active"] is False and facts["9999"]["state"] == "inactive in PTS"


async def test_systems_are_checked_again_daily(
    fake_pts: FakePts, pts_clock: ManualClock, astore: AsyncStore
) -> None:
    uplink = make_uplink(make_config(fake_pts), astore, pts_clock)
    try:
        for hours in range(0, 50, 6):
            pts_clock.now = eastern_s(2026, 1, 10) + hours * 3600
            await uplink.step()
    finally:
        await uplink.aclose()
    assert fake_pts.count("GetSystems") == 3  # hours 0, 24 and 48


async def test_get_and_post_query_styles(
    fake_pts: FakePts, pts_clock: ManualClock, astore: AsyncStore
) -> None:
    await feed(astore, eastern_s(2026, 1, 25), eastern_s(2026, 2, 3))
    for method in ("GET", "POST"):
        uplink = make_uplink(
            make_config(fake_pts, query_method=method, test_before_submit=False),
            astore,
            pts_clock,
        )
        try:
            pts_clock.now = eastern_s(2026, 1, 29)
            result = await uplink.submit(1000, test=True)
        finally:
            await uplink.aclose()
        assert result["ok"] is True and result["action"] == "tested"
    queries = [(c.operation, c.method, c.query, c.body) for c in fake_pts.calls]
    assert ("GetSystems", "GET", "fk_system=1000", None) in queries
    assert ("GetSystems", "POST", "", {"systems": [{"fk_system": 1000}]}) in queries
    assert ("GetLastReading", "GET", "fk_system=1000", None) in queries
    assert ("GetLastReading", "POST", "", {"systems": [{"fk_system": 1000}]}) in queries
    assert fake_pts.count("ARPost") == 0  # a test never spends quota
