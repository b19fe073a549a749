"""The fake MTS refuses what the documented service refuses (a lenient fake hides bugs)."""

from __future__ import annotations

import aiohttp

from tests.fakes.mts import FakeMts
from tests.fixtures.mts import METER_PASSWORD, REMOTE_ADDRESS, TOKEN

JSON = {"Accept": "application/json"}
AUTH = {**JSON, "Authorization": f"Bearer {TOKEN}"}
REQUEST = {
    "requestReference": "ABC",
    "meterType": "ELSTERA1700",
    "remoteAddress": REMOTE_ADDRESS,
    "password": METER_PASSWORD,
    "surveyDays": 1,
}


async def call(
    fake: FakeMts, method: str, op: str, *, headers: dict[str, str] = AUTH, **kwargs: object
) -> tuple[int, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{fake.url}/{op}", headers=headers, **kwargs) as response,  # type: ignore[arg-type]
    ):
        return response.status, await response.json(content_type=None)


async def test_auth_service_status_and_errors_with_details(fake_mts: FakeMts) -> None:
    assert await call(fake_mts, "GET", "service-status", headers=JSON) == (
        200,
        {"serviceVersion": "3.0.0", "status": "OK"},
    )
    status, body = await call(fake_mts, "POST", "test-request", headers=JSON, json=REQUEST)
    assert status == 401 and body["details"]  # type: ignore[index]
    bad = {**REQUEST, "remoteAddress": "abc"}
    assert await call(fake_mts, "POST", "test-request", json=bad) == (
        400,
        {"details": "Remote address is not in a recognised format"},
    )
    status, body = await call(fake_mts, "POST", "test-request", json={**REQUEST, "surveyDay": 1})
    assert (status, body) == (400, {"details": ["Unknown parameter surveyDay"]})
    status, _ = await call(fake_mts, "POST", "test-request", data=b"x", headers=AUTH)
    assert status == 400
    assert (await call(fake_mts, "GET", "test-status", params={"testId": "5"}))[0] == 400


async def test_pending_then_complete_cancel_by_json_body(fake_mts: FakeMts) -> None:
    fake_mts.polls_until_done = 2
    _, body = await call(fake_mts, "POST", "test-request", json=REQUEST)
    test_id = body["testId"]  # type: ignore[index]
    _, first = await call(fake_mts, "GET", "test-status", params={"testid": str(test_id)})
    # One spelling only (the examples' `testid` by default): the other is refused.
    assert (await call(fake_mts, "GET", "test-status", params={"testId": str(test_id)}))[0] == 400
    _, second = await call(fake_mts, "GET", "test-status", params={"testid": str(test_id)})
    assert first == {"testid": test_id, "resultSummary": "PENDING"}  # odd id: sample style
    assert second["resultSummary"] == "SUCCESS"  # type: ignore[index]
    assert second["surveyData"][0]["readings"]  # type: ignore[index]
    other = (await call(fake_mts, "POST", "test-request", json=REQUEST))[1]["testId"]  # type: ignore[index]
    assert (await call(fake_mts, "DELETE", f"test-cancel?testId={other}"))[0] == 400
    assert await call(fake_mts, "DELETE", "test-cancel", json={"testId": other}) == (
        200,
        {"testId": str(other)},
    )
    assert fake_mts.cancelled == [other]


async def test_search_pages_with_limit_and_offset(fake_mts: FakeMts) -> None:
    fake_mts.max_page = 2
    ids = [fake_mts.create_test(REQUEST, 1_767_225_600_000 + n) for n in range(3)]
    query = {"fromTime": "2026-01-01T00:00:00Z", "requestReference": "ABC"}
    status, page = await call(fake_mts, "GET", "test-search", params={**query, "limit": "2"})
    assert status == 200
    assert (page["totalResultCount"], page["resultCount"], page["offset"]) == (3, 2, 0)  # type: ignore[index]
    _, rest = await call(fake_mts, "GET", "test-search", params={**query, "offset": "2"})
    assert [r["testId"] for r in [*page["results"], *rest["results"]]] == ids  # type: ignore[index]
    assert (await call(fake_mts, "GET", "test-search", params={**query, "limit": "3"}))[0] == 400
    assert (await call(fake_mts, "GET", "test-search", params={"requestReference": "ABC"}))[
        0
    ] == 400
    bad_time = {**query, "fromTime": "2026-01-01T00:00:00"}
    assert (await call(fake_mts, "GET", "test-search", params=bad_time))[0] == 400


async def test_rate_limit_answers_429_with_an_integer_retry_after(fake_mts: FakeMts) -> None:
    fake_mts.rate_limit = 1
    fake_mts.rate_window_secs = 30
    assert (await call(fake_mts, "GET", "test-status", params={"testId": "1"}))[0] == 400
    assert await call(fake_mts, "GET", "test-status", params={"testId": "1"}) == (
        429,
        {"retryAfter": 30},
    )
