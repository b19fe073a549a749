"""MTS faults: refused token, rate limit, 5xx and dropped connections, garbage, 400 details."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr

from core.health import Health
from gateway.net.policy import Outcome
from gateway.sources.mts.client import MtsClient, MtsError
from tests.fakes.mts import FakeMeter, FakeMts
from tests.fixtures.mts import METER_PASSWORD, REMOTE_ADDRESS, SERIAL, TOKEN
from tests.gateway.sources.mts.mts_helpers import METER, opened_store, running, section
from tests.helpers.eventually import eventually


async def test_only_service_status_goes_without_the_token(
    tmp_path: Path, fake_mts: FakeMts
) -> None:
    async with opened_store(tmp_path) as astore, running(section(fake_mts), astore) as runtime:
        await eventually(lambda: astore.store.count(METER) == 48)
    assert runtime.service == {"serviceVersion": "3.0.0", "status": "OK"}
    for operation, headers in fake_mts.seen_headers:
        if operation == "service-status":
            assert "Authorization" not in headers
        else:
            assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert not fake_mts.refused


async def test_a_refused_token_pauses_every_meter_alerts_once_and_resumes_when_fixed(
    tmp_path: Path, fake_mts: FakeMts, caplog
) -> None:  # type: ignore[no-untyped-def]
    fake_mts.token = None  # the token was deleted in MTS
    health = Health()
    async with opened_store(tmp_path) as astore, running(section(fake_mts), astore, health):
        await eventually(lambda: health.meter(METER).errors["auth"] >= 2, what="a probe")
        assert astore.store.count(METER) == 0
        auth_alerts = [a for a in health.alerts if "refused the API token" in a.message]
        assert len(auth_alerts) == 1
        fake_mts.token = TOKEN  # a new token... (the same value, for the test)
        await eventually(lambda: astore.store.count(METER) == 48, what="the survey")
    assert fake_mts.statuses[401] == health.meter(METER).errors["auth"]
    assert TOKEN not in caplog.text


async def test_forbidden_is_paused_like_unauthorised(tmp_path: Path, fake_mts: FakeMts) -> None:
    fake_mts.forbid()
    health = Health()
    async with opened_store(tmp_path) as astore, running(section(fake_mts), astore, health):
        await eventually(lambda: health.meter(METER).errors["auth"] >= 1)
        fake_mts.forbid(False)
        await eventually(lambda: astore.store.count(METER) == 48, what="the survey")
    assert any("MTS API scope" in alert.message for alert in health.alerts)


async def test_429_retry_after_is_honoured(tmp_path: Path, fake_mts: FakeMts) -> None:
    fake_mts.rate_limit = 1  # test-request passes; the first poll is refused
    fake_mts.rate_window_secs = 1.0
    health = Health()
    async with opened_store(tmp_path) as astore, running(section(fake_mts), astore, health):
        await eventually(lambda: astore.store.count(METER) == 48, timeout=8, what="the survey")
    refused = [i for i, (_, _, status) in enumerate(fake_mts.history) if status == 429]
    assert refused and fake_mts.retry_afters[0] == 1
    first = refused[0]
    # The next call came no sooner than retryAfter (1 s) after the 429.
    assert fake_mts.history[first + 1][0] - fake_mts.history[first][0] >= 0.95
    assert len(refused) == 1
    assert health.meter(METER).errors["rate_limited"] == 1


async def test_5xx_and_dropped_connections_are_retried_with_backoff(
    tmp_path: Path, fake_mts: FakeMts
) -> None:
    health = Health()
    fake_mts.polls_until_done = 3
    fake_mts.fail_next(1, 200, body=b'{"serviceVersion": "3.0.0", "status": "OK"}')
    fake_mts.fail_next(2, 503)
    fake_mts.fail_next(1, 500, body=b"Internal Server Error")
    async with opened_store(tmp_path) as astore, running(section(fake_mts), astore, health):
        await eventually(lambda: fake_mts.calls["test-status"] >= 1)
        fake_mts.drop_connections(2)
        await eventually(lambda: astore.store.count(METER) == 48, what="the survey")
    # 503, 503, 500, and the drops (aiohttp itself retries a GET once on a kept-alive
    # connection the server closed, so at least one of the two reaches us).
    assert health.meter(METER).errors["unreachable"] >= 4
    assert len(fake_mts.tests) == 1  # test-search showed the refused request never arrived
    assert fake_mts.calls["test-search"] == 3


async def test_garbage_answers_are_counted_and_never_stop_the_source(
    tmp_path: Path, fake_mts: FakeMts
) -> None:
    fake_mts.hold()
    fake_mts.service_ok = False  # the start-up check fails: alerted, meters go on regardless
    health = Health()
    async with opened_store(tmp_path) as astore, running(section(fake_mts), astore, health):
        await eventually(lambda: fake_mts.calls["test-status"] >= 1)
        assert "MTS service-status failed at start" in health.alerts[0].message
        fake_mts.garbage_next(1)  # HTML
        fake_mts.garbage_next(1, b'{"testId": 1001}')  # no result at all
        fake_mts.garbage_next(1, b'{"testId": 1001, "result": "RUNNING"}')  # unknown result
        fake_mts.garbage_next(1, b"[1, 2, 3]")
        fake_mts.garbage_next(1, b'{"testId": 999, "result": "SUCCESS"}')  # another test
        await eventually(lambda: health.meter(METER).errors["garbage"] >= 5, what="garbage")
        fake_mts.release()
        await eventually(lambda: astore.store.count(METER) == 48, what="the survey")
    assert health.meter(METER).errors["garbage"] == 5


async def test_a_refused_request_reports_mts_details_and_is_not_repeated_before_its_slot(
    tmp_path: Path, fake_mts: FakeMts
) -> None:
    health = Health()
    config = section(fake_mts, meter={"remote_address": "abc"})
    async with opened_store(tmp_path) as astore, running(config, astore, health):
        await eventually(lambda: health.meter(METER).errors["rejected"] == 1)
        await asyncio.sleep(0.3)  # many retry/poll periods
        pending = astore.store.state("source:mts", "pending")
    assert fake_mts.calls["test-request"] == 1
    message = "test-request refused: Remote address is not in a recognised format"
    assert health.meter(METER).last_error == message
    assert [a.message for a in health.alerts] == [message]
    assert pending == "{}"


async def test_a_huge_retry_after_is_capped_logged_and_shown(
    tmp_path: Path, fake_mts: FakeMts, caplog
) -> None:  # type: ignore[no-untyped-def]
    """A 429 with retryAfter 10^9 (here on the first call, service-status) once stopped MTS
    polling silently until restart (issue 16 #15). Every retryAfter goes through the one
    backoff policy and its cap (`retry_after_max_secs`); a wait over the cap is logged, and
    shown in the state of every meter (MTS's limit is per token)."""
    fake_mts.fail_next(1, 429, retry_after=1_000_000_000)
    health = Health()
    config = section(fake_mts, retry_after_max_secs=0.3)
    async with opened_store(tmp_path) as astore, running(config, astore, health):
        facts = health.meter(METER).facts
        await eventually(lambda: "rate_limited_until" in facts, what="the pause shown")
        assert facts["rate_limited_for_secs"] == 0.3
        assert facts["rate_limit_asked_secs"] == 1_000_000_000
        assert "rate_limited_until" in facts
        await eventually(lambda: astore.store.count(METER) == 48, timeout=8, what="the survey")
    assert "asked to wait 1000000000 s" in caplog.text and "the cap" in caplog.text
    assert "rate_limited_until" not in health.meter(METER).facts  # cleared once through


@pytest.mark.parametrize("spelling", ["testid", "testId"])
async def test_test_status_asks_with_the_configured_spelling(tmp_path: Path, spelling: str) -> None:
    """The document's examples write `test-status?testid=1234`, its table `testId` (issue 14
    #16): the default follows the examples; `test_status_query_key` picks the other. The fake
    takes exactly one spelling, as a case-sensitive server would."""
    overrides = {} if spelling == "testid" else {"test_status_query_key": spelling}
    async with FakeMts(TOKEN, status_query_key=spelling) as fake:
        fake.add_meter(FakeMeter(REMOTE_ADDRESS, serial=SERIAL, password=METER_PASSWORD))
        async with opened_store(tmp_path) as astore, running(section(fake, **overrides), astore):
            await eventually(lambda: astore.store.count(METER) == 48, what="the survey")
        assert fake.calls["test-status"] >= 1
        assert not fake.refused


async def test_a_web_page_is_not_a_cancelled_test(fake_mts: FakeMts) -> None:
    """test-cancel answers `{"testId": ...}` (the document's sample); a 200 page from a proxy
    or captive portal is not MTS saying yes: an error (retried by the caller), not success
    (issue 16 #8)."""
    client = MtsClient(fake_mts.url, SecretStr(TOKEN))
    try:
        fake_mts.garbage_next(1)  # <html>maintenance</html>
        with pytest.raises(MtsError) as info:
            await client.cancel(1234)
        assert info.value.garbage and info.value.outcome is Outcome.RETRY
    finally:
        await client.aclose()
