"""The PTS uplink when things go wrong: failing validation (quota not wasted), the quota ledger,
restarts mid-sequence (no duplicate submission), a window closing without a pass."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.health import Health
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from gateway.uplinks.pts import ledger as pts_ledger
from tests.fakes.pts import FakePts
from tests.fixtures.pts import KEY
from tests.gateway.uplinks.pts.pts_helpers import (
    alerts,
    counted,
    eastern_s,
    feed,
    ledger,
    make_config,
    make_uplink,
    run_until,
)
from tests.helpers.clock import ManualClock

MONTH_END = "2026-02-01T00:00:00"
AFTER_MONTH_END = "2026-02-01T00:15:00"


@pytest.fixture
async def astore(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    astore = AsyncStore(Store(tmp_path / "queue.db"))
    yield astore
    await astore.aclose()


@pytest.fixture
async def january(astore: AsyncStore) -> AsyncStore:
    """A store holding January's month end: a sample every 15 minutes, Jan 25 - Feb 4."""
    await feed(astore, eastern_s(2026, 1, 25), eastern_s(2026, 2, 4))
    return astore


async def test_reading_below_the_last_one_is_reported_not_submitted(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    fake_pts.systems[1000].last_value = 7000.0  # PTS holds more than the meter: replaced?
    health = Health()
    uplink = make_uplink(make_config(fake_pts), january, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 1)
        await uplink.step()
        pts_clock.now += 3600
        await uplink.step()  # re-checked daily, not every pass
    finally:
        await uplink.aclose()
    assert fake_pts.count("ARPostTest") == 0 and fake_pts.count("ARPost") == 0
    assert fake_pts.count("GetLastReading") == 1
    assert counted(await ledger(january)) == []
    [alert] = alerts(health)
    assert "NOT submitted" in alert and "below the last accepted reading 7000 kWh" in alert
    assert "MeterValue 6116.3 kWh" in alert and "(-883.700 kWh)" in alert  # the numbers
    facts = health.uplink("pts").facts["systems"]["1000"]
    assert facts["state"] == "blocked: needs a human"
    assert "below the last accepted reading" in facts["problems"][0]


async def test_test_submission_failure_spends_no_quota(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    fake_pts.fail_validation(1000, "Production inconsistent with estimated annual production")
    health = Health()
    uplink = make_uplink(make_config(fake_pts), january, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 1)
        await uplink.step()
    finally:
        await uplink.aclose()
    assert fake_pts.count("ARPostTest") == 1 and fake_pts.count("ARPost") == 0
    rows = await ledger(january)
    assert [(r.test, r.status) for r in rows] == [(True, "failed")]
    assert counted(rows) == []
    [alert] = alerts(health)
    assert "ARPostTest validation failed: Production inconsistent" in alert


async def test_test_refusing_the_date_tries_the_reading_after_midnight_for_free(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    fake_pts.fail_validation(1000, "MeterDate is outside the current reporting window")
    health = Health()
    uplink = make_uplink(make_config(fake_pts), january, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 1)
        await uplink.step()
    finally:
        await uplink.aclose()
    assert [t["MeterDate"] for t in fake_pts.tests] == [MONTH_END, AFTER_MONTH_END]
    assert [(s.meter_date, s.passed) for s in fake_pts.submitted(1000)] == [(AFTER_MONTH_END, True)]
    assert alerts(health) == []


async def test_failed_validation_is_reported_and_not_retried_when_unfixable(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    notes = "Production is above the system capacity for the period"
    fake_pts.fail_validation(1000, notes)
    health = Health()
    config = make_config(fake_pts, test_before_submit=False)
    uplink = make_uplink(config, january, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 1)
        await uplink.step()
        pts_clock.now += 700
        await uplink.step()
        pts_clock.now += 86_400
        await uplink.step()
    finally:
        await uplink.aclose()
    assert len(fake_pts.submitted(1000)) == 1
    [row] = [r for r in await ledger(january) if not r.test]
    assert (row.status, row.validation_notes) == ("failed", notes)
    assert any("FAILED validation: " + notes in a and "human" in a for a in alerts(health))
    last = health.uplink("pts").facts["systems"]["1000"]["last_validation"]
    assert last["status"] == "failed" and last["notes"] == notes


async def test_fixable_failure_is_retried_once_with_a_reading_after_month_end(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    fake_pts.fail_validation(1000, "MeterDate is outside the current reporting window")
    health = Health()
    uplink = make_uplink(
        make_config(fake_pts, test_before_submit=False), january, pts_clock, health
    )
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 1)
        await uplink.step()
        pts_clock.now += 700
        await uplink.step()  # Failed -> retried with the first reading after midnight
        pts_clock.now += 700
        await uplink.step()
    finally:
        await uplink.aclose()
    assert [(s.meter_date, s.passed) for s in fake_pts.submitted(1000)] == [
        (MONTH_END, False),
        (AFTER_MONTH_END, True),
    ]
    assert [(o, s, d) for o, s, _, d in counted(await ledger(january))] == [
        ("auto", "failed", MONTH_END),
        ("retry", "passed", AFTER_MONTH_END),
    ]
    assert any("Retrying automatically" in a for a in alerts(health))


async def test_no_automatic_retry_that_would_use_the_last_failed_submission(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    fake_pts.fail_validation(1000, "MeterDate is outside the current reporting window")
    health = Health()
    config = make_config(fake_pts, test_before_submit=False, quota_failed=2)
    uplink = make_uplink(config, january, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 1)
        await uplink.step()
        pts_clock.now += 700
        await uplink.step()
    finally:
        await uplink.aclose()
    assert len(fake_pts.submitted(1000)) == 1
    assert any("kept for a human" in a for a in alerts(health))


async def test_quota_ledger_help_desk_override_and_last_one_in_wins(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    fake_pts.fail_validation(1000, "Production is above the system capacity")
    config = make_config(fake_pts, test_before_submit=False, quota_failed=1)
    health = Health()
    uplink = make_uplink(config, january, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 1)
        await uplink.step()
        pts_clock.now += 700
        await uplink.step()  # Failed: 1 of 1 failed submissions used
        refused = await uplink.submit(1000)
        assert refused["ok"] is False and "failed quota used: 1 of 1" in refused["error"]
        assert len(fake_pts.submitted(1000)) == 1

        # The help desk raises the limit for this window; the gateway records it.
        await january.run(
            pts_ledger.record_override,
            1000,
            "2026-01",
            max_valid=2,
            max_failed=2,
            reason="ticket 4711",
            now_ms=int(pts_clock.now * 1000),
        )
        fake_pts.raise_quota(1000, "2026-01", valid=2, failed=2)
        manual = await uplink.submit(1000)
        assert manual["ok"] is True and manual["action"] == "submitted"
        assert manual["quota"] == {
            "passed": 0,
            "failed": 1,
            "pending": 0,
            "max_valid": 2,
            "max_failed": 2,
        }
        pts_clock.now += 700
        await uplink.step()
        again = await uplink.submit(1000)  # the same reading passed: never resubmitted
    finally:
        await uplink.aclose()
    assert again["ok"] is True and again["action"] == "already_passed"
    assert [s.passed for s in fake_pts.submitted(1000)] == [False, True]
    facts = health.uplink("pts").facts["systems"]["1000"]
    assert facts["quota"]["override"] == "ticket 4711"
    assert facts["state"] == "passed"


async def test_restart_after_arpost_does_not_submit_again(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    first = make_uplink(make_config(fake_pts), january, pts_clock)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 1)
        await first.step()
    finally:
        await first.aclose()
    assert len(fake_pts.submitted(1000)) == 1

    pts_clock.now += 30  # restarted before the first status poll, still validating
    second = make_uplink(make_config(fake_pts), january, pts_clock)
    try:
        await second.step()
        pts_clock.now += 700
        await second.step()
    finally:
        await second.aclose()
    assert len(fake_pts.submitted(1000)) == 1
    assert fake_pts.count("ARPostTest") == 1
    assert [status for _, status, _, _ in counted(await ledger(january))] == ["passed"]


async def test_lost_arpost_answer_is_resolved_without_a_duplicate(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    fake_pts.lose_answer_next("ARPost")  # PTS took it; the gateway never heard back
    health = Health()
    first = make_uplink(make_config(fake_pts), january, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 1)
        await first.step()
    finally:
        await first.aclose()
    assert [status for _, status, _, _ in counted(await ledger(january))] == ["sending"]
    assert health.uplink("pts").retries == 1

    pts_clock.now += 5  # crash and restart
    second = make_uplink(make_config(fake_pts), january, pts_clock)
    try:
        await second.step()  # GetSubmissionStatus shows our reading: it arrived
        pts_clock.now += 700
        await second.step()
    finally:
        await second.aclose()
    assert len(fake_pts.submitted(1000)) == 1
    assert [status for _, status, _, _ in counted(await ledger(january))] == ["passed"]


async def test_arpost_that_never_arrived_is_sent_again_once(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    fake_pts.drop_next("ARPost")  # the connection died before PTS processed anything
    first = make_uplink(make_config(fake_pts), january, pts_clock)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 1)
        await first.step()
    finally:
        await first.aclose()
    assert fake_pts.submissions == []

    pts_clock.now += 5
    second = make_uplink(make_config(fake_pts), january, pts_clock)
    try:
        # Not shown by PTS: not received only after unseen_after_secs and unseen_polls
        # polls (PTS may still be writing it to its interim table), then sent again.
        await run_until(second, pts_clock, pts_clock.now + 6 * 3600 - 60)
        assert fake_pts.submissions == []
        await run_until(second, pts_clock, pts_clock.now + 3600)
    finally:
        await second.aclose()
    assert len(fake_pts.submitted(1000)) == 1
    assert [status for _, status, _, _ in counted(await ledger(january))] == [
        "not_received",
        "passed",
    ]


async def test_server_errors_back_off_and_nothing_is_lost(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    fake_pts.fail_next(2, 500, operation="GetSystems")
    health = Health()
    uplink = make_uplink(make_config(fake_pts), january, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 1)
        delays = [await uplink.step() for _ in range(3)]
    finally:
        await uplink.aclose()
    assert delays[0] <= 0.02 and delays[1] <= 0.02  # the configured backoff, not check_every
    assert len(fake_pts.submitted(1000)) == 1
    assert health.uplink("pts").retries == 2 and alerts(health) == []


async def test_bad_key_pauses_and_alerts_once(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    fake_pts.key = "rotated-by-the-help-desk"
    health = Health()
    uplink = make_uplink(make_config(fake_pts, auth_probe_secs=600), january, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 1)
        delay = await uplink.step()
        await uplink.step()  # paused: no call
    finally:
        await uplink.aclose()
    assert delay == 600
    assert [c.status for c in fake_pts.calls] == [400]
    [alert] = alerts(health)
    assert "refused the subscription key" in alert
    state = health.uplink("pts")
    assert state.paused_reason is not None
    for text in (alert, state.paused_reason, state.last_error or "", str(state.facts)):
        assert KEY not in text  # the key we sent is never logged or published


async def test_window_closing_without_a_pass_alerts_ahead_and_at_close(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    fake_pts.systems[1000].last_value = 7000.0  # every reading fails the local check
    health = Health()
    uplink = make_uplink(make_config(fake_pts), january, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 1)
        await uplink.step()
        assert len(alerts(health)) == 1  # the blocked reading
        pts_clock.now = eastern_s(2026, 2, 3, 23, 59)  # 48 h + 1 min before the close
        await uplink.step()
        assert len(alerts(health)) == 1
        pts_clock.now = eastern_s(2026, 2, 4, 0, 1)
        await uplink.step()
        await uplink.step()
        closing = alerts(health)[1:]
        assert len(closing) == 1
        assert "closes at 2026-02-06T00:00:00 Eastern (in 48 h)" in closing[0]
        assert "failed a check" in closing[0] and "below the last accepted reading" in closing[0]
        pts_clock.now = eastern_s(2026, 2, 6, 0, 5)
        await uplink.step()
        await uplink.step()
    finally:
        await uplink.aclose()
    closed = alerts(health)[2:]
    assert len(closed) == 1
    assert "January 2026" in closed[0] and "CLOSED without a passed reading" in closed[0]
    assert fake_pts.count("ARPost") == 0


async def test_gateway_offline_across_the_whole_window_says_so_loudly(
    fake_pts: FakePts, pts_clock: ManualClock, astore: AsyncStore
) -> None:
    health = Health()
    before = make_uplink(make_config(fake_pts), astore, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 1, 20)
        await before.step()
    finally:
        await before.aclose()
    pts_clock.now = eastern_s(2026, 2, 10, 8)
    after = make_uplink(make_config(fake_pts), astore, pts_clock, health)
    try:
        await after.step()
        await after.step()
    finally:
        await after.aclose()
    [alert] = alerts(health)
    assert "CLOSED without a passed reading" in alert
    assert "NOT RUNNING across the WHOLE window" in alert
    assert "last seen 2026-01-20T00:00:00, back 2026-02-10T08:00:00" in alert


async def test_nothing_happens_while_the_clock_is_untrusted(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    pts_clock.is_trusted = False
    health = Health()
    uplink = make_uplink(make_config(fake_pts), january, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 1)
        await uplink.step()
        refused = await uplink.submit(1000)
    finally:
        await uplink.aclose()
    assert fake_pts.calls == []
    assert refused["ok"] is False and "clock" in refused["error"]
    assert health.uplink("pts").facts["clock_trusted"] is False


async def test_flush_after_the_key_is_fixed_probes_at_once(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    """The operator fixes the key at the help desk and sends `cmd/uplinks/pts/flush`: the
    next pass calls PTS instead of waiting out the 10-minute credentials pause."""
    fake_pts.key = "rotated-by-the-help-desk"
    health = Health()
    uplink = make_uplink(make_config(fake_pts, auth_probe_secs=600), january, pts_clock, health)
    try:
        pts_clock.now = eastern_s(2026, 2, 2, 1)
        assert await uplink.step() == 600
        fake_pts.key = KEY
        await uplink.step()
        assert len(fake_pts.calls) == 1  # still paused: no call
        uplink.flush()
        await uplink.step()
    finally:
        await uplink.aclose()
    assert health.uplink("pts").paused_reason is None
    assert len(fake_pts.submitted(1000)) == 1
