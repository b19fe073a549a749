"""The strict PTS fake refuses what the real service would: a fake that accepts anything
could hide a bug in the uplink."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.pts import FakePts
from tests.fixtures.pts import KEY
from tests.gateway.uplinks.pts.pts_helpers import eastern_s
from tests.helpers.clock import ManualClock

HEADERS = {"Ocp-Apim-Subscription-Key": KEY, "Ocp-Apim-Trace": "true"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    fake: FakePts,
    operation: str,
    *,
    method: str = "GET",
    query: str = "",
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    url = f"{fake.base_url}{fake.prefix}/{operation}" + (f"?{query}" if query else "")
    async with http.request(
        method, url, json=body, headers=HEADERS if headers is None else headers
    ) as response:
        return response.status, await response.json(content_type=None)


def post(value: float, date: str, fk: int = 1000, **extra: Any) -> dict[str, Any]:
    reading = {"fk_system": fk, "MeterValue": value, "MeterDate": date, "Notes": None}
    return {"APIKey": KEY, "Notes": "t", "systems": [reading], **extra}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 400),
        ({"Ocp-Apim-Subscription-Key": "wrong", "Ocp-Apim-Trace": "true"}, 400),
        ({"Ocp-Apim-Subscription-Key": KEY}, 400),  # the trace header is required too
        (HEADERS, 200),
    ],
)
async def test_both_headers_and_the_right_key(
    http: aiohttp.ClientSession, fake_pts: FakePts, headers: dict[str, str], status: int
) -> None:
    assert (await call(http, fake_pts, "GetSystems", headers=headers))[0] == status


async def test_paths_methods_and_bodies(http: aiohttp.ClientSession, fake_pts: FakePts) -> None:
    assert (await call(http, fake_pts, "getsystems"))[0] == 404
    assert (await call(http, fake_pts, "ARPost"))[0] == 405  # GET
    assert (await call(http, fake_pts, "GetSubmissionStatus", method="POST"))[0] == 405
    assert (await call(http, fake_pts, "GetSystems", query="fk_system=1000,x"))[0] == 400
    bad_body = {"systems": [{"fk_system": "1000"}]}
    assert (await call(http, fake_pts, "GetSystems", method="POST", body=bad_body))[0] == 400
    date = "2026-01-31T23:59:00"
    wrong_key = post(6000.0, date, APIKey="other")
    assert (await call(http, fake_pts, "ARPost", method="POST", body=wrong_key))[0] == 400
    typo = post(6000.0, date, Note="x")
    assert (await call(http, fake_pts, "ARPost", method="POST", body=typo))[0] == 400
    for bad_date in ("2026-01-31 23:59:00", "2026-01-31T23:59:00-05:00", "2026-02-30T00:00:00"):
        body = post(6000.0, bad_date)
        assert (await call(http, fake_pts, "ARPostTest", method="POST", body=body))[0] == 400
    twice = post(6000.0, date)
    twice["systems"] *= 2
    assert (await call(http, fake_pts, "ARPost", method="POST", body=twice))[0] == 400
    assert fake_pts.submissions == []


async def test_systems_and_last_reading_by_get_and_post(
    http: aiohttp.ClientSession, fake_pts: FakePts
) -> None:
    status, items = await call(http, fake_pts, "GetSystems", query="fk_system=1000,3000,9999")
    assert status == 200
    assert [(i["fk_system"], i["Error"]) for i in items] == [
        (1000, None),
        (3000, "System not found"),  # inactive
        (9999, "System not found"),
    ]
    assert items[0]["capacity"] == 10.0
    body = {"systems": [{"fk_system": 2000}]}
    status, items = await call(http, fake_pts, "GetLastReading", method="POST", body=body)
    assert status == 200
    assert [(i["MeterValue"], i["MeterDate"]) for i in items] == [(800.0, "2025-12-31T23:45:00")]


@pytest.mark.parametrize(
    "case",
    [
        (4990.0, "2026-01-31T23:59:00", "below the last reading"),
        (5000.0, "2026-01-31T23:59:00", "equals the last reading"),
        (0.0, "2026-01-31T23:59:00", "greater than 0"),
        (6000.0, "2026-01-26T23:59:59", "outside the current reporting window"),
        (6000.0, "2026-02-06T00:00:00", "outside the current reporting window"),
        (13_000.0, "2026-01-31T23:59:00", "above the system capacity"),  # 10 kW × 744 h
    ],
)
async def test_validation_rules(
    http: aiohttp.ClientSession,
    fake_pts: FakePts,
    pts_clock: ManualClock,
    case: tuple[float, str, str],
) -> None:
    value, date, notes = case
    pts_clock.now = eastern_s(2026, 2, 1, 12)
    status, [answer] = await call(
        http, fake_pts, "ARPostTest", method="POST", body=post(value, date)
    )
    assert status == 200 and answer["ValidationStatus"] == -1
    assert notes in answer["ValidationNotes"]
    ok = post(6100.0, "2026-01-27T00:00:00")  # first second of the window
    status, [answer] = await call(http, fake_pts, "ARPostTest", method="POST", body=ok)
    assert answer == {
        "fk_system": 1000,
        "Error": None,
        "ValidationStatus": 1,
        "ValidationNotes": "",
    }
    assert fake_pts.submissions == []  # a test saves nothing


async def test_status_moves_from_validating_and_quotas_hold(
    http: aiohttp.ClientSession, fake_pts: FakePts, pts_clock: ManualClock
) -> None:
    pts_clock.now = eastern_s(2026, 2, 1, 12)
    results = []
    for value in (4000.0, 4001.0, 4002.0, 4003.0):  # all below the last reading: Failed
        _, [answer] = await call(
            http, fake_pts, "ARPost", method="POST", body=post(value, "2026-01-31T23:00:00")
        )
        results.append(answer["Error"])
    assert results == [None, None, None, "Maximum of 3 failed submissions reached"]
    _, [entry] = await call(http, fake_pts, "GetSubmissionStatus")
    assert (entry["MeterValue"], entry["ValidationStatus"]) == (4002.0, 0)  # last one in
    pts_clock.now += fake_pts.validation_delay_secs
    body = {"systems": [{"fk_system": 1000}]}
    _, [entry] = await call(http, fake_pts, "GetSubmissionStatus", body=body)
    assert entry["ValidationStatus"] == -1 and "below" in entry["ValidationNotes"]

    answers = []
    for value in (6000.0, 6001.0, 6002.0):
        body = post(value, "2026-01-31T23:00:00", 2000)
        answers.append((await call(http, fake_pts, "ARPost", method="POST", body=body))[1][0])
    assert [a["Error"] for a in answers] == [None, None, "Maximum of 2 valid submissions reached"]
    assert [s.passed for s in fake_pts.submitted(2000)] == [True, True]  # the 3rd not recorded
    pts_clock.now += fake_pts.validation_delay_secs
    _, entries = await call(http, fake_pts, "GetSubmissionStatus")
    assert {e["fk_system"]: e["ValidationStatus"] for e in entries} == {1000: -1, 2000: 1}


async def test_window_closed_and_settlement(
    http: aiohttp.ClientSession, fake_pts: FakePts, pts_clock: ManualClock
) -> None:
    pts_clock.now = eastern_s(2026, 2, 15)
    _, [answer] = await call(
        http, fake_pts, "ARPost", method="POST", body=post(6000.0, "2026-01-31T23:00:00")
    )
    assert answer["Error"] == "The reporting window is closed"
    assert (await call(http, fake_pts, "GetSubmissionStatus"))[1] == []

    pts_clock.now = eastern_s(2026, 2, 2)
    await call(http, fake_pts, "ARPost", method="POST", body=post(6000.0, "2026-01-31T23:00:00"))
    _, [unknown] = await call(
        http, fake_pts, "ARPost", method="POST", body=post(1.0, "2026-01-31T23:00:00", 9999)
    )
    assert unknown["Error"] == "System not found or not active"
    pts_clock.now = eastern_s(2026, 2, 6)  # the window closed: the pass goes to production
    _, [last] = await call(http, fake_pts, "GetLastReading", query="fk_system=1000")
    assert (last["MeterValue"], last["MeterDate"], last["EnergyProduced"]) == (
        6000.0,
        "2026-01-31T23:00:00",
        1000.0,
    )
    assert last["PeriodEndDate"] == "2026-01-31T00:00:00"
