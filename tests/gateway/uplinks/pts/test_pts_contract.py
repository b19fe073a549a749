"""The PTS Automated Reporting API as its document writes it (/work/shared/specs/
pts-monthly-automated-reporting.txt), against the strict fake on a virtual clock: what PTS
stores and echoes is what we send, a bad key on ARPost pauses instead of blocking the window,
an unanswered ARPost is not resent on a guess, status polls are batched, back off and are
counted, a test costs what a failed validation costs, and a 200 that is not PTS's moves
nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.health import Health
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from gateway.uplinks.pts import ledger as pts_ledger
from tests.fakes.pts import FakePts
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

pytestmark = pytest.mark.timeout(60)

MONTH_END = "2026-02-01T00:00:00"
#: The register at January's month end (pts_helpers.energy_wh): three decimals in the store.
JANUARY_KWH_STORED = 6116.375
JANUARY_KWH_SENT = 6116.3


@pytest.fixture
async def january(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    """A store holding January's month end for meters pv and pv2 (every 15 minutes)."""
    astore = AsyncStore(Store(tmp_path / "queue.db"))
    for meter in ("pv", "pv2"):
        await feed(astore, eastern_s(2026, 1, 25), eastern_s(2026, 2, 4), meter=meter)
    yield astore
    await astore.aclose()


def due_time() -> float:
    return eastern_s(2026, 2, 2, 1)


# -- 1. the reading PTS stores is the reading we send -------------------------------------------


async def test_our_own_reading_echoed_with_one_decimal_is_not_taken_for_another(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    """The register holds 6116.375 kWh; PTS keeps one decimal ("MeterValue": 2835.3 in every
    example) and echoes 6116.4 or 6116.3. The gateway sends 6116.3 (rounded down) and
    recognises the echo: passed, no "another tool submits?" alarm, nothing superseded."""
    health = Health()
    uplink = make_uplink(make_config(fake_pts), january, pts_clock, health)
    try:
        pts_clock.now = due_time()
        await run_until(uplink, pts_clock, pts_clock.now + 3600)
    finally:
        await uplink.aclose()
    assert [(s.value, s.meter_date) for s in fake_pts.submitted(1000)] == [
        (JANUARY_KWH_SENT, MONTH_END)
    ]
    assert counted(await ledger(january)) == [("auto", "passed", JANUARY_KWH_SENT, MONTH_END)]
    assert not [a for a in alerts(health) if "another tool" in a]


async def test_an_echo_within_one_step_of_the_rounding_is_our_reading(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    """A PTS that stores whole kWh (stricter than the examples) echoes 6116.0 for our 6116.3:
    with meter_value_decimals 0 the gateway sends 6116 and the echo matches."""
    fake_pts.stored_decimals = 0
    uplink = make_uplink(make_config(fake_pts, meter_value_decimals=0), january, pts_clock)
    try:
        pts_clock.now = due_time()
        await run_until(uplink, pts_clock, pts_clock.now + 3600)
    finally:
        await uplink.aclose()
    assert counted(await ledger(january)) == [("auto", "passed", 6116.0, MONTH_END)]


# -- 2. "400 : Bad API Key" on ARPost is credentials, not a refused reading --------------------


async def test_a_bad_api_key_on_arpost_pauses_and_submits_once_the_key_works(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    health = Health()
    fake_pts.fail_next(1, 400, operation="ARPost", body=b"Bad API Key", content_type="text/plain")
    uplink = make_uplink(make_config(fake_pts), january, pts_clock, health)
    try:
        pts_clock.now = due_time()
        delay = await uplink.step()
        assert fake_pts.submissions == []
        state = health.uplink("pts")
        assert state.paused_reason is not None and "subscription key" in state.paused_reason
        assert delay == pytest.approx(3600)  # probed at auth_probe_secs, not hammered
        assert [r.status for r in await ledger(january) if not r.test] == ["not_received"]
        assert any("subscription key" in a for a in alerts(health))
        await run_until(uplink, pts_clock, pts_clock.now + 2 * 3600)
    finally:
        await uplink.aclose()
    assert health.uplink("pts").paused_reason is None
    assert len(fake_pts.submitted(1000)) == 1
    assert [status for _, status, _, _ in counted(await ledger(january))] == [
        "not_received",
        "passed",
    ]
    facts = health.uplink("pts").facts["systems"]["1000"]["quota"]
    assert (facts["passed"], facts["failed"]) == (1, 0)  # the refused key cost nothing


# -- 3. an unanswered ARPost is not resent while PTS may still be writing it ------------------


async def test_an_unanswered_arpost_is_not_resent_while_pts_may_still_show_it(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    """ARPost processed, its answer lost; PTS shows it in GetSubmissionStatus only after
    half an hour (its "interim table"). One poll that does not show it is no proof."""
    fake_pts.interim_delay_secs = 1800
    fake_pts.validation_delay_secs = 60
    fake_pts.lose_answer_next("ARPost")
    uplink = make_uplink(make_config(fake_pts), january, pts_clock)
    try:
        pts_clock.now = due_time()
        await run_until(uplink, pts_clock, pts_clock.now + 4 * 3600)
    finally:
        await uplink.aclose()
    assert len(fake_pts.submitted(1000)) == 1  # the second valid submission is not spent
    assert [status for _, status, _, _ in counted(await ledger(january))] == ["passed"]


# -- 4. status polling: batched, backing off, counted -----------------------------------------


async def test_status_polls_are_batched_back_off_and_are_counted_per_day(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    """Two systems validating for four hours: one GetSubmissionStatus asks for both, at
    doubling intervals ("API Key may be invalidated for abuse"), and the calls of the day
    are in the health facts."""
    fake_pts.validation_delay_secs = 4 * 3600
    health = Health()
    systems = {"pv": {"fk_system": 1000}, "pv2": {"fk_system": 2000}}
    config = make_config(fake_pts, systems=systems, status_poll_secs=300)
    uplink = make_uplink(config, january, pts_clock, health)
    try:
        pts_clock.now = due_time()
        await run_until(uplink, pts_clock, pts_clock.now + 5 * 3600)
    finally:
        await uplink.aclose()
    for fk in (1000, 2000):
        rows = await january.run(pts_ledger.submissions, fk)
        assert [r.status for r in rows if not r.test] == ["passed"]
    polls = [c for c in fake_pts.calls if c.operation == "GetSubmissionStatus"]
    assert len(polls) <= 9, len(polls)  # every 300 s for two systems would be ~100
    batched = [
        c for c in polls if c.body == {"systems": [{"fk_system": 1000}, {"fk_system": 2000}]}
    ]
    assert len(batched) == len(polls)
    calls = health.uplink("pts").facts["calls_today"]
    assert calls["day"] == "2026-02-02"
    assert calls["total"] == len(fake_pts.calls)
    assert calls["by_operation"]["GetSubmissionStatus"] == len(polls)


async def test_the_count_of_calls_survives_a_restart(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    pts_clock.now = due_time()
    first = make_uplink(make_config(fake_pts), january, pts_clock)
    try:
        await first.step()
    finally:
        await first.aclose()
    made = len(fake_pts.calls)
    health = Health()
    second = make_uplink(make_config(fake_pts), january, pts_clock, health)
    try:
        pts_clock.now += 60
        await second.step()
    finally:
        await second.aclose()
    assert health.uplink("pts").facts["calls_today"]["total"] == len(fake_pts.calls) > made


# -- 5. ARPostTest is not free ----------------------------------------------------------------


async def test_a_failed_test_counts_against_the_failed_quota(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    """ARPostTest "will be run through Validation"; PTS limits "3 failed validation
    submissions per system": the conservative reading counts a failed test."""
    health = Health()
    fake_pts.fail_validation(1000, "Validation service timeout, try again")
    uplink = make_uplink(make_config(fake_pts), january, pts_clock, health)
    try:
        pts_clock.now = due_time()
        await uplink.step()
    finally:
        await uplink.aclose()
    assert fake_pts.failed_quota(1000, "2026-01") == 1
    quota = health.uplink("pts").facts["systems"]["1000"]["quota"]
    assert quota["failed"] == 1


async def test_no_test_is_run_once_the_failed_quota_is_used(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    for _ in range(3):
        await january.run(
            pts_ledger.record,
            1000,
            "2026-01",
            pts_ledger.NewEntry(
                test=True,
                origin="manual",
                meter_value=JANUARY_KWH_SENT,
                meter_date=MONTH_END,
                sample_id=None,
                status="failed",
            ),
            now_ms=int(due_time() * 1000),
        )
    uplink = make_uplink(make_config(fake_pts), january, pts_clock)
    try:
        pts_clock.now = due_time()
        outcome = await uplink.submit(1000, test=True)
    finally:
        await uplink.aclose()
    assert outcome["action"] == "refused" and "failed quota used" in outcome["error"]
    assert fake_pts.count("ARPostTest") == 0


async def test_a_test_answer_without_the_system_is_unknown_not_a_pass(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    """ "200 : Received Data" and nothing else: no word on the system's validation."""
    fake_pts.answers = "received"
    uplink = make_uplink(make_config(fake_pts), january, pts_clock)
    try:
        pts_clock.now = due_time()
        outcome = await uplink.submit(1000, test=True)
    finally:
        await uplink.aclose()
    assert (outcome["ok"], outcome["validation"]) == (False, "unknown")
    (row,) = await ledger(january)
    assert (row.test, row.status) == (True, "unknown")


# -- issue 16 #8: a 200 that is not PTS's moves nothing --------------------------------------


async def test_get_systems_answered_by_a_portal_page_is_retried_not_taken_as_no_systems(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    health = Health()
    fake_pts.fail_next(1, 200, operation="GetSystems", body=b"<html><body>Log in</body></html>")
    fake_pts.fail_next(
        1, 200, operation="GetSystems", body=b'{"ok": true}', content_type="application/json"
    )
    uplink = make_uplink(make_config(fake_pts), january, pts_clock, health)
    try:
        pts_clock.now = due_time()
        await run_until(uplink, pts_clock, pts_clock.now + 3600)
    finally:
        await uplink.aclose()
    assert not [a for a in alerts(health) if "unknown or inactive" in a]
    assert [status for _, status, _, _ in counted(await ledger(january))] == ["passed"]
    assert health.uplink("pts").facts["unexpected_answers"] == 2
    assert health.uplink("pts").retries >= 2


async def test_arpost_answered_by_a_portal_page_is_not_counted_as_received(
    fake_pts: FakePts, pts_clock: ManualClock, january: AsyncStore
) -> None:
    """The page came from a captive portal: PTS got nothing. The row stays `sending` (it may
    have arrived), GetSubmissionStatus decides after the fair wait, and it is sent again."""
    health = Health()
    fake_pts.fail_next(1, 200, operation="ARPost", body=b"<!DOCTYPE html><p>Wi-Fi login</p>")
    uplink = make_uplink(make_config(fake_pts), january, pts_clock, health)
    try:
        pts_clock.now = due_time()
        await uplink.step()
        assert [r.status for r in await ledger(january) if not r.test] == ["sending"]
        assert health.uplink("pts").delivered == 0
        await run_until(uplink, pts_clock, pts_clock.now + 8 * 3600)
    finally:
        await uplink.aclose()
    assert [status for _, status, _, _ in counted(await ledger(january))] == [
        "not_received",
        "passed",
    ]
    assert len(fake_pts.submitted(1000)) == 1


# -- 10. https only ----------------------------------------------------------------------------


async def test_the_fake_refuses_plain_http_to_a_remote_host_name(fake_pts: FakePts) -> None:
    import aiohttp

    from tests.fixtures.pts import KEY

    headers = {
        "Host": "automatedreporting.masscec-pts.com",
        "Ocp-Apim-Subscription-Key": KEY,
        "Ocp-Apim-Trace": "true",
    }
    url = f"{fake_pts.base_url}{fake_pts.prefix}/GetSystems?fk_system=1000"
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
        assert answer.status == 403


def test_config_refuses_plain_http_to_pts() -> None:
    import pydantic

    from gateway.uplinks.pts.config import PtsConfig

    with pytest.raises(pydantic.ValidationError, match="https"):
        PtsConfig.model_validate(
            {
                "subscription_key": "k",
                "base_url": "http://automatedreporting.masscec-pts.com",
                "path_prefix": "/ptsstaging",
                "systems": {"pv": {"fk_system": 1000}},
            }
        )
