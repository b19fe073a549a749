"""The strict fake Locus refuses what the real API documents as refused."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import aiohttp

from tests.fakes.locus import FakeLocus, energy_wh
from tests.fixtures.locus import (
    CLIENT_ID,
    CLIENT_SECRET,
    PASSWORD,
    PV_ROOF,
    USERNAME,
)
from tests.helpers.clock import ManualClock


async def token(
    session: aiohttp.ClientSession, fake: FakeLocus, **form: str
) -> aiohttp.ClientResponse:
    body = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **form}
    async with session.post(fake.url + "/oauth/token", data=body) as response:
        await response.read()
        return response


async def password_token(session: aiohttp.ClientSession, fake: FakeLocus) -> dict[str, Any]:
    body = {
        "grant_type": "password",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "username": USERNAME,
        "password": PASSWORD,
    }
    async with session.post(fake.url + "/oauth/token", data=body) as response:
        assert response.status == 200
        answer: dict[str, Any] = await response.json()
        return answer


async def get(
    session: aiohttp.ClientSession, fake: FakeLocus, path: str, access: str, **query: str
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {access}"}
    async with session.get(fake.url + path, params=query, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def test_grants_and_token_expiry(fake_locus: FakeLocus, locus_clock: ManualClock) -> None:
    async with aiohttp.ClientSession() as session:
        answer = await password_token(session, fake_locus)
        assert answer["expires_in"] == 3600 and answer["refresh_token"]
        assert (await token(session, fake_locus, grant_type="client_credentials")).status == 400
        refused = await token(session, fake_locus, grant_type="refresh_token", refresh_token="x")
        assert refused.status == 400
        wrong = await token(session, fake_locus, grant_type="password", client_secret="no")
        assert wrong.status == 401
        refreshed = await token(
            session, fake_locus, grant_type="refresh_token", refresh_token=answer["refresh_token"]
        )
        assert refreshed.status == 200
        path = f"/v3/components/{PV_ROOF}/dataavailable"
        assert (await get(session, fake_locus, path, answer["access_token"]))[0] == 200
        assert (await get(session, fake_locus, path, "not-a-token"))[0] == 401
        fake_locus.expire_tokens()
        assert (await get(session, fake_locus, path, answer["access_token"]))[0] == 401


async def test_a_second_concurrent_request_gets_the_locus_429(fake_locus: FakeLocus) -> None:
    async with aiohttp.ClientSession() as session:
        access = (await password_token(session, fake_locus))["access_token"]
        path = f"/v3/components/{PV_ROOF}/dataavailable"
        fake_locus.slow(0.2)
        results = await asyncio.gather(*(get(session, fake_locus, path, access) for _ in range(2)))
    assert sorted(status for status, _ in results) == [200, 429]
    assert {"message": "Too many requests", "statusCode": 429} in [body for _, body in results]
    assert fake_locus.max_in_flight == 2


async def test_data_arguments_span_limits_and_gzip(
    fake_locus: FakeLocus, locus_clock: ManualClock
) -> None:
    path = f"/v3/components/{PV_ROOF}/data"
    async with aiohttp.ClientSession() as session:
        access = (await password_token(session, fake_locus))["access_token"]

        async def data(**query: str) -> tuple[int, Any]:
            return await get(session, fake_locus, path, access, **query)

        base = {"fields": "W_avg,Wh_sum", "tz": "UTC"}
        status, _ = await data(**base, gran="5min", start="2026-01-01T00:00:00")
        assert status == 400  # end missing
        too_long = {"start": "2026-01-01T00:00:00", "end": "2026-02-01T00:00:00"}
        assert (await data(**base, gran="5min", **too_long))[0] == 400  # 31 days
        assert (
            await data(**base, gran="1min", start="2026-01-01T00:00:00", end="2026-01-06T00:00:00")
        )[0] == 400
        assert (
            await data(**base, gran="daily", start="2026-01-01T00:00:00", end="2027-01-01T00:00:00")
        )[0] == 400
        assert (await data(fields="WhExp_max", tz="UTC", gran="latest"))[0] == 400
        status, answer = await data(
            **base, gran="hourly", start="2026-01-01T00:00:00", end="2026-01-31T00:00:00"
        )
        assert status == 200 and len(answer["data"]) == 30 * 24
        first = answer["data"][0]
        assert first["ts"] == "2026-01-01T00:00:00+00:00"
        minute = 1_767_225_600_000 // 60_000
        assert first["Wh_sum"] == energy_wh(1, minute, minute + 60)
        status, answer = await data(
            fields="Wh_sum",
            tz="US/Pacific",
            gran="daily",
            start="2026-01-01T00:00:00",
            end="2026-01-03T00:00:00",
        )
        assert [item["ts"] for item in answer["data"]] == [
            "2026-01-01T00:00:00-08:00",
            "2026-01-02T00:00:00-08:00",
        ]
        # A plain request without Accept-Encoding: gzip is answered uncompressed.
        headers = {"Authorization": f"Bearer {access}", "Accept-Encoding": "identity"}
        async with session.get(
            fake_locus.url + path, params={**base, "gran": "latest"}, headers=headers
        ) as response:
            assert "Content-Encoding" not in response.headers
        headers["Accept-Encoding"] = "gzip"
        async with session.get(
            fake_locus.url + path,
            params={**base, "gran": "latest"},
            headers=headers,
            auto_decompress=False,
        ) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert b'"data"' in gzip.decompress(await response.read())


async def test_components_by_node_id(fake_locus: FakeLocus) -> None:
    async with aiohttp.ClientSession() as session:
        access = (await password_token(session, fake_locus))["access_token"]
        status, answer = await get(
            session, fake_locus, "/v3/partners/123/components", access, nodeId="OB.ROOF.1"
        )
        assert status == 200 and [c["id"] for c in answer["components"]] == [PV_ROOF]
        status, _ = await get(session, fake_locus, "/v3/partners/999/components", access)
        assert status == 403
