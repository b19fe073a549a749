"""The fake Wattics must refuse whatever the real service would refuse."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes.wattics import PATH, FakeWattics
from tests.fixtures.wattics import PASSWORD, USERNAME


def basic(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


AUTH = basic(USERNAME, PASSWORD)
JSON = {"Content-Type": "application/json"}
GOOD = {"id": "stream-a", "tsISO8601": "2024-01-01T12:00:00.000+01:00", "aP_1": 1.5, "pC_1": 10}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def post(
    http: aiohttp.ClientSession,
    fake: FakeWattics,
    body: bytes | dict[str, object],
    *,
    auth: dict[str, str] | None = AUTH,
    headers: dict[str, str] = JSON,
    url: str | None = None,
) -> int:
    data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    all_headers = {**headers, **(auth or {})}
    async with http.post(url or fake.url, data=data, headers=all_headers) as response:
        await response.read()
        return response.status


def line(packet: dict[str, object]) -> bytes:
    return json.dumps(packet, separators=(",", ":")).encode()


async def test_a_valid_packet_is_accepted_and_recorded(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics
) -> None:
    assert await post(http, fake_wattics, GOOD) == 200
    assert fake_wattics.delivered("stream-a") == [GOOD]
    value = {"id": "stream-b", "tsISO8601": "2024-01-01T12:00:00.000-03:30", "value": 7}
    assert await post(http, fake_wattics, value) == 200
    assert fake_wattics.delivered("stream-b") == [value]
    assert fake_wattics.rejected == []


@pytest.mark.parametrize(
    "body",
    [
        line(GOOD)[:-1] + b",\n" + b'"aP_2":1}',
        b"{\r\n" + line(GOOD)[1:],
        line(GOOD) + b"\n",
        b"[" + line(GOOD) + b"]",
        b'"just a string"',
        b"",
        b"{not json}",
        line(GOOD)[:-1] + b',"aP_1":2}',  # duplicate key
        line(GOOD)[:-1] + b',"aP_2":NaN}',
        line(GOOD)[:-1] + b',"aP_2":1e999}',  # parses to infinity
        "é".encode("latin-1") + line(GOOD),  # not UTF-8
    ],
    ids=[
        "newline-inside",
        "crlf",
        "trailing-newline",
        "list",
        "string",
        "empty",
        "not-json",
        "duplicate-key",
        "nan",
        "infinity",
        "not-utf8",
    ],
)
async def test_malformed_bodies_are_400(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics, body: bytes
) -> None:
    assert await post(http, fake_wattics, body) == 400
    assert fake_wattics.total_accepted() == 0


@pytest.mark.parametrize(
    "stamp",
    [
        "2024-01-01T12:00:00+01:00",  # no milliseconds
        "2024-01-01T12:00:00.00+01:00",
        "2024-01-01T12:00:00.000000+01:00",
        "2024-01-01T12:00:00.000Z",
        "2024-01-01T12:00:00.000",
        "2024-01-01T12:00:00.000+0100",
        "2024-01-01 12:00:00.000+01:00",
        "2024-13-01T12:00:00.000+01:00",
        "2024-02-30T12:00:00.000+01:00",
        "2024-01-01T12:00:00.000+15:00",
        "2024-01-01T12:00:00.000+01:00 ",
        "２０２４-01-01T12:00:00.000+01:00",
    ],
)
async def test_timestamps_must_match_the_format_exactly(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics, stamp: str
) -> None:
    assert await post(http, fake_wattics, {**GOOD, "tsISO8601": stamp}) == 400
    assert await post(http, fake_wattics, {**GOOD, "tsISO8601": 1704106800000}) == 400


@pytest.mark.parametrize(
    "change",
    [
        {"frequency": 50.0},  # not a Wattics parameter
        {"pc_1": 1},  # names are case-sensitive
        {"aP_1": None},
        {"aP_1": "1.5"},
        {"aP_1": True},
        {"aP_1": [1]},
        {"value": 3},  # mixing the two formats
        {"id": ""},
        {"id": 42},
    ],
    ids=str,
)
async def test_fields_are_checked(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics, change: dict[str, object]
) -> None:
    assert await post(http, fake_wattics, {**GOOD, **change}) == 400


async def test_packet_without_measurement_or_id_is_400(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics
) -> None:
    assert await post(http, fake_wattics, {"id": "stream-a", "tsISO8601": GOOD["tsISO8601"]}) == 400
    assert await post(http, fake_wattics, {"tsISO8601": GOOD["tsISO8601"], "aP_1": 1}) == 400
    assert await post(http, fake_wattics, {"id": "stream-a", "aP_1": 1}) == 400
    bad_value = {"id": "stream-a", "tsISO8601": GOOD["tsISO8601"], "value": None}
    assert await post(http, fake_wattics, bad_value) == 400


async def test_authentication_is_required(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics
) -> None:
    assert await post(http, fake_wattics, GOOD, auth=None) == 401
    assert await post(http, fake_wattics, GOOD, auth=basic(USERNAME, "wrong")) == 401
    assert await post(http, fake_wattics, GOOD, auth=basic("x" + USERNAME, PASSWORD)) == 401
    bearer = {**JSON, "Authorization": "Bearer " + PASSWORD}
    assert await post(http, fake_wattics, GOOD, auth=None, headers=bearer) == 401
    assert fake_wattics.total_accepted() == 0


async def test_path_method_type_and_stream_are_checked(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics
) -> None:
    base = fake_wattics.url.removesuffix(PATH)
    assert await post(http, fake_wattics, GOOD, url=base + PATH.rstrip("/")) == 404
    assert await post(http, fake_wattics, GOOD, url=base + "/measurements/v2/unifiedjsonx/") == 404
    assert await post(http, fake_wattics, GOOD, headers={"Content-Type": "text/plain"}) == 415
    assert await post(http, fake_wattics, {**GOOD, "id": "nobody"}) == 404
    async with http.put(fake_wattics.url, data=line(GOOD), headers={**JSON, **AUTH}) as response:
        assert response.status == 405
    assert fake_wattics.total_accepted() == 0


async def test_out_of_order_packets_are_answered_200_but_discarded(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics
) -> None:
    later = {**GOOD, "tsISO8601": "2024-01-01T12:00:01.000+01:00"}
    same_instant = {**GOOD, "tsISO8601": "2024-01-01T11:00:01.000+00:00"}
    assert await post(http, fake_wattics, later) == 200
    assert await post(http, fake_wattics, GOOD) == 200
    assert await post(http, fake_wattics, same_instant) == 200
    assert fake_wattics.delivered("stream-a") == [later]
    assert fake_wattics.all_discarded() == [GOOD, same_instant]


async def test_repeated_autumn_hour_is_in_order_when_offsets_differ(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics
) -> None:
    first = {**GOOD, "tsISO8601": "2024-10-27T01:30:00.000+01:00"}
    second = {**GOOD, "tsISO8601": "2024-10-27T01:30:00.000+00:00"}
    assert await post(http, fake_wattics, first) == 200
    assert await post(http, fake_wattics, second) == 200
    assert fake_wattics.delivered("stream-a") == [first, second]
    assert fake_wattics.all_discarded() == []


async def test_get_returns_the_last_processed_packet(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics
) -> None:
    url = fake_wattics.url
    async with http.get(url, params={"stream": "stream-a"}, headers=AUTH) as response:
        assert response.status == 404
    await post(http, fake_wattics, GOOD)
    async with http.get(url, params={"stream": "stream-a"}, headers=AUTH) as response:
        assert response.status == 200
        assert await response.json() == GOOD
    async with http.get(url, params={"stream": "stream-a"}) as response:
        assert response.status == 401
    async with http.get(url, headers=AUTH) as response:
        assert response.status == 400


async def test_fail_next_and_retry_after(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics
) -> None:
    fake_wattics.fail_next(2, 503, retry_after=3)
    for _ in range(2):
        async with http.post(fake_wattics.url, data=line(GOOD), headers={**JSON, **AUTH}) as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "3"
    assert await post(http, fake_wattics, GOOD) == 200
    assert fake_wattics.statuses == {503: 2, 200: 1}
    assert fake_wattics.requests == 3


async def test_fail_for_a_while(http: aiohttp.ClientSession, fake_wattics: FakeWattics) -> None:
    fake_wattics.fail_for(0.2, 500)
    assert await post(http, fake_wattics, GOOD) == 500
    await asyncio.sleep(0.25)
    assert await post(http, fake_wattics, GOOD) == 200


async def test_dropped_connection_and_slow_answer(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics
) -> None:
    fake_wattics.drop_connections(1)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(http, fake_wattics, GOOD)
    assert fake_wattics.dropped == 1
    fake_wattics.slow(0.5)
    with pytest.raises(TimeoutError):
        async with http.post(
            fake_wattics.url,
            data=line(GOOD),
            headers={**JSON, **AUTH},
            timeout=aiohttp.ClientTimeout(total=0.1),
        ):
            pass
    fake_wattics.slow(0)
    assert await post(http, fake_wattics, GOOD) == 200


async def test_credentials_can_be_revoked_and_changed(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics
) -> None:
    fake_wattics.reject_credentials()
    assert await post(http, fake_wattics, GOOD) == 401
    fake_wattics.accept_credentials("new-user", "new-pw")
    assert await post(http, fake_wattics, GOOD) == 401
    assert await post(http, fake_wattics, GOOD, auth=basic("new-user", "new-pw")) == 200


async def test_reject_matching_refuses_chosen_packets(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics
) -> None:
    fake_wattics.reject_matching(lambda p: p.get("aP_1") == 666, 400, "bad reading")
    assert await post(http, fake_wattics, {**GOOD, "aP_1": 666}) == 400
    assert fake_wattics.rejected[-1].reason == "bad reading"
    assert await post(http, fake_wattics, GOOD) == 200


async def test_without_registered_streams_any_id_is_accepted(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeWattics("u", "p") as fake:
        auth = basic("u", "p")
        assert await post(http, fake, {**GOOD, "id": "anything"}, auth=auth) == 200
    async with FakeWattics("u", "p") as fake:
        await fake.stop()  # exiting after an explicit stop is safe


async def test_the_utc_route_takes_only_utc_timestamps(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics
) -> None:
    utc_url = fake_wattics.url.removesuffix(PATH) + "/measurements/v2/unifiedjson_utc/"
    assert await post(http, fake_wattics, GOOD, url=utc_url) == 400  # GOOD is +01:00
    in_utc = {**GOOD, "tsISO8601": "2024-01-01T10:00:00.000+00:00"}
    assert await post(http, fake_wattics, in_utc, url=utc_url) == 200
    assert fake_wattics.delivered("stream-a") == [in_utc]


async def test_a_registered_datapoint_takes_only_its_kind_and_counts_holes_and_off_grid(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics
) -> None:
    fake_wattics.register("stream-b", "value", interval_s=900)
    packet = {"id": "stream-b", "tsISO8601": "2024-01-01T10:00:00.000+05:45", "value": 1.5}
    assert await post(http, fake_wattics, {**GOOD, "id": "stream-b"}) == 400
    assert await post(http, fake_wattics, packet) == 200
    later = {**packet, "tsISO8601": "2024-01-01T10:45:00.000+05:45"}  # 10:15, 10:30 missing
    assert await post(http, fake_wattics, later) == 200
    off = {**packet, "tsISO8601": "2024-01-01T10:50:00.000+05:45"}
    assert await post(http, fake_wattics, off) == 200
    assert fake_wattics.holes("stream-b") == 2
    assert fake_wattics.off_grid["stream-b"] == 1


async def test_a_lost_answer_still_counts_the_packet(
    http: aiohttp.ClientSession, fake_wattics: FakeWattics
) -> None:
    fake_wattics.lose_answers(1)
    with pytest.raises(aiohttp.ClientError):
        await post(http, fake_wattics, GOOD)
    assert fake_wattics.delivered("stream-a") == [GOOD]
    assert fake_wattics.lost_answers == 1
