"""The one failure table every uplink shares, and the backoff it retries with."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import aiohttp
import pytest

from core.backoff import Backoff, equal_jitter, no_jitter
from gateway.net.policy import (
    Outcome,
    classify_exception,
    classify_response,
    classify_status,
    parse_retry_after,
    rate_limit_remaining,
    retry_after_from_json,
)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.OK),
        (201, Outcome.OK),
        (204, Outcome.OK),
        (401, Outcome.AUTH),
        (403, Outcome.AUTH),
        (408, Outcome.RETRY),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
        (504, Outcome.RETRY),
        (400, Outcome.REJECT),
        (404, Outcome.REJECT),
        (409, Outcome.REJECT),
        (413, Outcome.REJECT),
        (422, Outcome.REJECT),
        (301, Outcome.RETRY),  # a redirect we do not follow: keep the data, say so
        (100, Outcome.RETRY),
    ],
)
def test_status_table(status: int, outcome: Outcome) -> None:
    assert classify_status(status) is outcome


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientConnectionError("refused"),
        aiohttp.ClientPayloadError("truncated"),
        TimeoutError(),
        OSError(113, "no route to host"),
        ConnectionResetError(104, "reset"),
    ],
)
def test_transport_errors_are_retried(exc: BaseException) -> None:
    verdict = classify_exception(exc)
    assert verdict.outcome is Outcome.RETRY
    assert verdict.status is None
    assert type(exc).__name__ in verdict.detail


def test_a_bug_is_not_mistaken_for_a_network_error() -> None:
    with pytest.raises(TypeError):
        classify_exception(KeyError("oops"))


def test_response_verdict_carries_retry_after_and_a_short_detail() -> None:
    verdict = classify_response(503, {"Retry-After": "7"}, b"maintenance\n" + b"x" * 1000)
    assert verdict.outcome is Outcome.RETRY
    assert verdict.retry_after_secs == 7
    assert verdict.detail.startswith("HTTP 503: maintenance x")
    assert len(verdict.detail) < 250


def test_json_retry_after_is_used_only_when_asked_and_no_header() -> None:
    body = b'{"message":"Too many requests","retryAfter":12}'
    assert classify_response(429, {}, body).retry_after_secs is None
    assert (
        classify_response(429, {}, body, json_retry_after_key="retryAfter").retry_after_secs == 12
    )
    with_header = classify_response(
        429, {"Retry-After": "3"}, body, json_retry_after_key="retryAfter"
    )
    assert with_header.retry_after_secs == 3


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2024, 3, 1, 12, 1, 30, tzinfo=UTC), usegmt=True)
    assert later == "Fri, 01 Mar 2024 12:01:30 GMT"
    assert parse_retry_after(later, now=now) == 90
    assert parse_retry_after("Fri, 01 Mar 2024 11:00:00 GMT", now=now) == 0  # in the past
    assert parse_retry_after(" 120 ") == 120
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("-5") == 0
    for garbage in (None, "", "soon", "nan", "inf", "Fri, 99 Foo 2024"):
        assert parse_retry_after(garbage) is None


def test_retry_after_from_json_is_defensive() -> None:
    assert retry_after_from_json(b'{"retryAfter": "4.5"}') == 4.5
    assert retry_after_from_json({"error": {"retryAfter": 2}}) == 2
    for garbage in (b"<html>", b"[1,2]", b'{"retryAfter": true}', b'{"retryAfter": "x"}', b""):
        assert retry_after_from_json(garbage) is None


def test_rate_limit_remaining_header() -> None:
    assert rate_limit_remaining({"X-Rate-Limit": "39999"}) == 39999
    assert rate_limit_remaining({"X-Rate-Limit": "12/40000"}) == 12
    assert rate_limit_remaining({"X-Rate-Limit": "lots"}) is None
    assert rate_limit_remaining({}) is None


def test_backoff_grows_exponentially_to_its_cap_with_full_jitter() -> None:
    top = Backoff(1.0, 10.0, rng=lambda: 1.0)
    assert [top.next_delay() for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    bottom = Backoff(1.0, 10.0, rng=lambda: 0.0)
    assert [bottom.next_delay() for _ in range(3)] == [0, 0, 0]
    half = Backoff(2.0, 100.0, rng=lambda: 0.5)
    assert [half.next_delay() for _ in range(3)] == [1, 2, 4]
    half.reset()
    assert half.next_delay() == 1


def test_backoff_without_jitter_or_with_equal_jitter() -> None:
    fixed = Backoff(0.5, 4.0, rng=no_jitter)
    assert [fixed.next_delay() for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    upper_half = Backoff(1.0, 8.0, rng=equal_jitter)
    for _ in range(20):
        for ceiling in (1, 2, 4, 8, 8):
            assert ceiling / 2 <= upper_half.next_delay() <= ceiling
        upper_half.reset()


def test_backoff_never_overflows_after_a_long_outage() -> None:
    backoff = Backoff(1.0, 300.0, rng=lambda: 1.0)
    for _ in range(5000):
        delay = backoff.next_delay()
    assert delay == 300


def test_retry_after_is_a_floor_but_capped() -> None:
    backoff = Backoff(0.01, 0.02, rng=lambda: 1.0, max_retry_after_secs=60)
    assert backoff.next_delay(retry_after=5) == 5
    assert backoff.next_delay(retry_after=0) == 0.02
    assert backoff.next_delay(retry_after=10**9) == 60
