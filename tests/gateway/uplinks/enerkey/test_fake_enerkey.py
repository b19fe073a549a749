"""The fake EnerKey is strict: it refuses what the real service documents as refused."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.enerkey import CONSUMPTION_PATH, CUMULATIVE_PATH, FakeEnerKey
from tests.fixtures.enerkey import KEY_A, KEY_B

H0 = "2024-03-31T00:00:00Z"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def push(
    http: aiohttp.ClientSession,
    fake: FakeEnerKey,
    body: Any,
    *,
    key: str | None = KEY_A,
    path: str = CUMULATIVE_PATH,
    raw: bytes | None = None,
    content_type: str = "application/json",
) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Authorization"] = key
    data = raw if raw is not None else json.dumps(body).encode()
    async with http.post(fake.url + path, data=data, headers=headers) as response:
        return response.status, dict(response.headers), await response.json()


def message(meter: object = 4711, *stamps: str, value: float = 1.5) -> dict[str, Any]:
    return {
        "meterId": meter,
        "values": [{"timestamp": s, "value": value} for s in (stamps or (H0,))],
    }


async def test_a_valid_push_is_taken_and_the_rate_limit_counts_down_per_key(
    http: aiohttp.ClientSession, fake_enerkey: FakeEnerKey
) -> None:
    status, headers, _ = await push(http, fake_enerkey, message())
    assert status == 200
    assert headers["X-Rate-Limit"] == "39999"
    status, headers, _ = await push(http, fake_enerkey, message(4712))
    assert headers["X-Rate-Limit"] == "39998"
    status, headers, _ = await push(http, fake_enerkey, message(), key=KEY_B)
    assert headers["X-Rate-Limit"] == "39999"
    assert [p.key for p in fake_enerkey.pushes] == ["A", "A", "B"]
    assert fake_enerkey.hours(4711) == {1_711_843_200_000: 3.0}  # two keys, one meter: summed


@pytest.mark.parametrize(
    "key", [None, "wrong", f"Bearer {KEY_A}", KEY_A[:-1]], ids=["none", "wrong", "bearer", "cut"]
)
async def test_anything_but_a_known_key_is_401(
    http: aiohttp.ClientSession, fake_enerkey: FakeEnerKey, key: str | None
) -> None:
    status, headers, _ = await push(http, fake_enerkey, message(), key=key)
    assert status == 401
    assert "X-Rate-Limit" not in headers
    assert fake_enerkey.pushes == []


async def test_a_revoked_key_is_refused_and_the_other_still_works(
    http: aiohttp.ClientSession, fake_enerkey: FakeEnerKey
) -> None:
    fake_enerkey.revoke("A")
    assert (await push(http, fake_enerkey, message()))[0] == 401
    assert (await push(http, fake_enerkey, message(), key=KEY_B))[0] == 200
    fake_enerkey.restore("A")
    assert (await push(http, fake_enerkey, message()))[0] == 200


async def test_429_with_retry_after_when_the_window_is_used_up(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeEnerKey({"A": KEY_A}, limit=2, window_secs=30) as fake:
        assert (await push(http, fake, message()))[1]["X-Rate-Limit"] == "1"
        assert (await push(http, fake, message()))[1]["X-Rate-Limit"] == "0"
        status, headers, _ = await push(http, fake, message())
        assert status == 429
        assert 29 <= int(headers["Retry-After"]) <= 30
        assert "X-Rate-Limit" not in headers
        assert len(fake.pushes) == 2


@pytest.mark.parametrize(
    "stamp",
    [
        "2024-03-31T00:00:00Z",
        "2024-03-31T00:00:00.000Z",
        "2024-03-31T03:00:00+03:00",
        "2024-03-30T21:00:00-03:00",
    ],
)
async def test_utc_and_offset_forms_on_the_hour_are_accepted(
    http: aiohttp.ClientSession, fake_enerkey: FakeEnerKey, stamp: str
) -> None:
    assert (await push(http, fake_enerkey, message(4711, stamp)))[0] == 200
    assert list(fake_enerkey.hours(4711)) == [1_711_843_200_000]


@pytest.mark.parametrize(
    "stamp",
    [
        "2024-03-31T00:30:00Z",
        "2024-03-31T00:00:01Z",
        "2024-03-31T00:00:00.001Z",
        "2024-03-31T00:00:00",
        "2024-03-31 00:00:00Z",
        "2024-03-31T00:00Z",
        "1711843200",
    ],
)
async def test_timestamps_off_the_hour_or_without_zone_are_400(
    http: aiohttp.ClientSession, fake_enerkey: FakeEnerKey, stamp: str
) -> None:
    status, _, answer = await push(http, fake_enerkey, message(4711, stamp))
    assert status == 400, answer
    assert fake_enerkey.pushes == []


@pytest.mark.parametrize(
    "body",
    [
        [message(4711), message(4712)],
        {**message(), "meters": [4712]},
        {"meterId": 4711},
        {"meterId": 4711, "values": []},
        {"meterId": True, "values": [{"timestamp": H0, "value": 1}]},
        {"meterId": 4711, "values": [{"timestamp": H0, "value": "1.5"}]},
        {"meterId": 4711, "values": [{"timestamp": H0, "value": 1, "meterId": 4712}]},
        {"meterId": 4711, "values": [{"timestamp": H0}]},
    ],
    ids=[
        "two-meters",
        "extra-field",
        "no-values",
        "empty-values",
        "bool-id",
        "string-value",
        "value-with-meter",
        "no-value",
    ],
)
async def test_malformed_messages_are_400(
    http: aiohttp.ClientSession, fake_enerkey: FakeEnerKey, body: Any
) -> None:
    assert (await push(http, fake_enerkey, body))[0] == 400
    assert fake_enerkey.pushes == []


async def test_nan_duplicate_keys_and_wrong_content_type_are_refused(
    http: aiohttp.ClientSession, fake_enerkey: FakeEnerKey
) -> None:
    nan = b'{"meterId":4711,"values":[{"timestamp":"2024-03-31T00:00:00Z","value":NaN}]}'
    dup = b'{"meterId":4711,"meterId":4712,"values":[]}'
    assert (await push(http, fake_enerkey, None, raw=nan))[0] == 400
    assert (await push(http, fake_enerkey, None, raw=dup))[0] == 400
    status, *_ = await push(http, fake_enerkey, message(), content_type="text/plain")
    assert status == 415


async def test_at_most_365_days_per_message(
    http: aiohttp.ClientSession, fake_enerkey: FakeEnerKey
) -> None:
    ok = message(4711, "2023-01-01T00:00:00Z", "2023-12-31T23:00:00Z")
    too_long = message(4711, "2023-01-01T00:00:00Z", "2024-01-01T00:00:00Z")
    assert (await push(http, fake_enerkey, ok))[0] == 200
    assert (await push(http, fake_enerkey, too_long))[0] == 400


async def test_unknown_paths_methods_and_meters(
    http: aiohttp.ClientSession, fake_enerkey: FakeEnerKey
) -> None:
    assert (await push(http, fake_enerkey, message(), path="/api/v2/Values/Push"))[0] == 404
    async with http.get(fake_enerkey.url + CUMULATIVE_PATH) as response:
        assert response.status == 405
    assert (await push(http, fake_enerkey, message(999)))[0] == 404
    assert (await push(http, fake_enerkey, message("site-7")))[0] == 200


async def test_values_of_one_hour_are_summed_consumption_and_readings_alike(
    http: aiohttp.ClientSession, fake_enerkey: FakeEnerKey
) -> None:
    for _ in range(2):
        await push(http, fake_enerkey, message(4711, value=2.5), path=CONSUMPTION_PATH)
        await push(http, fake_enerkey, message(4712, value=7.0))
    assert fake_enerkey.hours(4711, "consumption") == {1_711_843_200_000: 5.0}
    # "Multiple values for same hour are summed." (enerkey-api.txt, Pushing/posting values)
    assert fake_enerkey.hours(4712) == {1_711_843_200_000: 14.0}
    assert len(fake_enerkey.duplicates()) == 2
