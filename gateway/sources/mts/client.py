"""The MTS API over HTTP: five calls, one error type, the rate limit shared by all meters.

Every failure becomes an MtsError carrying gateway.net.policy's Verdict (the one table of
what to do): RETRY (network, timeout, 429 with `retryAfter`, 5xx, an unreadable 200), AUTH
(401/403: a human must act), REJECT (400 and other 4xx; `details` is kept for the report).
A 429 holds back every later call of this client until its `retryAfter` has passed, since MTS's
limit is per token, not per meter. That wait goes through the one backoff policy (core.backoff)
and its cap (`retry_after_max_secs`): a server cannot stop polling for longer; a wait longer
than a minute, or a retryAfter cut to the cap, is logged and reported to `on_pause`.
The token is sent as a Bearer header only; it is never put
into an error, a log line or health. `service-status` goes without it, as documented.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp
import yarl
from pydantic import SecretStr

from core.backoff import Backoff
from gateway.clock.clocks import Clock, SystemClock
from gateway.net.policy import (
    TRANSPORT_ERRORS,
    Outcome,
    Verdict,
    classify_exception,
    classify_response,
)
from gateway.net.session import KeptSession, SessionFactory, read_limited
from gateway.sources.mts import parse as mts_parse

log = logging.getLogger(__name__)


#: A test-status answer with a long survey is larger than an uplink's error body.
MAX_ANSWER_BYTES: Final = 16 * 1024 * 1024
#: A rate-limit pause at least this long is logged (shorter ones are routine).
LONG_PAUSE_SECS: Final = 60.0

#: Told of every rate-limit pause: (seconds MTS asked for or None, seconds waited).
PauseListener = Callable[[float | None, float], None]


class MtsError(Exception):
    """A call that did not give a usable answer; `verdict.outcome` says what to do."""

    def __init__(self, operation: str, verdict: Verdict, details: str = "") -> None:
        self.operation = operation
        self.verdict = verdict
        self.details = details
        text = details or verdict.detail
        super().__init__(f"{operation}: {text}")

    @property
    def outcome(self) -> Outcome:
        return self.verdict.outcome

    @property
    def garbage(self) -> bool:
        """A 2xx whose body was not the JSON object MTS promises."""
        return self.verdict.status is not None and 200 <= self.verdict.status < 300


class MtsClient:
    """One MTS base URL and token; `aclose()` is safe to call twice."""

    def __init__(
        self,
        base_url: str,
        token: SecretStr,
        *,
        timeout_secs: float = 30.0,
        max_concurrency: int = 2,
        clock: Clock | None = None,
        session_factory: SessionFactory | None = None,
        retry_after_max_secs: float = 3600.0,
        status_query_key: str = "testid",
        on_pause: PauseListener | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._token = token
        self._clock: Clock = clock or SystemClock()
        self._sessions = KeptSession(timeout_secs, factory=session_factory)
        self._slots = asyncio.Semaphore(max_concurrency)
        #: clock.monotonic() before which no call is made (a 429's retryAfter).
        self._not_before = 0.0
        #: The one policy for 429 waits: retryAfter as a minimum, capped (no jitter needed
        #: above it: MTS names the wait).
        self._rate_backoff = Backoff(
            1.0, retry_after_max_secs, max_retry_after_secs=retry_after_max_secs, rng=lambda: 0.0
        )
        self._on_pause = on_pause
        self._status_key = status_query_key
        #: Calls made, by operation (and "429" for rate-limited answers).
        self.calls: Counter[str] = Counter()

    async def aclose(self) -> None:
        await self._sessions.close()

    def _open(self) -> aiohttp.ClientSession:
        return self._sessions.get()

    # -- operations ---------------------------------------------------------------------------

    async def service_status(self) -> Mapping[str, Any]:
        body = await self._call("service-status", "GET", auth=False)
        return _object("service-status", body)

    async def request_test(self, params: Mapping[str, object]) -> int:
        """test-request: the new test's id."""
        body = _object("test-request", await self._call("test-request", "POST", body=params))
        test_id = mts_parse.integer(mts_parse.key(body, "testId"))
        if test_id is None:
            raise _unreadable("test-request", "no testId in the answer")
        return test_id

    async def test_status(self, test_id: int) -> Mapping[str, Any]:
        body = await self._call("test-status", "GET", query={self._status_key: str(test_id)})
        return _object("test-status", body)

    async def search(self, query: Mapping[str, str]) -> Mapping[str, Any]:
        return _object("test-search", await self._call("test-search", "GET", query=query))

    async def cancel(self, test_id: int) -> None:
        """test-cancel: DELETE with a JSON body (MTS answers positively for a finished test).
        Its answer is `{"testId": ...}`: anything but a JSON object (a proxy's page) is not a
        yes, and is retried."""
        _object("test-cancel", await self._call("test-cancel", "DELETE", body={"testId": test_id}))

    # -- HTTP ---------------------------------------------------------------------------------

    async def _call(
        self,
        operation: str,
        method: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, object] | None = None,
        auth: bool = True,
    ) -> object:
        url = yarl.URL(f"{self._base}/{operation}")
        if query:
            url = url.with_query(dict(query))
        headers = {"Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        async with self._slots:
            wait = self._not_before - self._clock.monotonic()
            if wait > 0:
                await self._clock.sleep(wait)
            self.calls[operation] += 1
            try:
                async with self._open().request(
                    method, url, data=data, headers=headers, allow_redirects=False
                ) as response:
                    raw = await read_limited(response, MAX_ANSWER_BYTES)
                    status = response.status
                    response_headers = response.headers
            except TRANSPORT_ERRORS as exc:
                raise MtsError(operation, classify_exception(exc)) from exc
        verdict = classify_response(
            status, response_headers, raw, now=self._clock.time(), json_retry_after_key="retryAfter"
        )
        if verdict.outcome is not Outcome.OK:
            if status == 429:
                self._rate_limited(operation, verdict.retry_after_secs)
            raise MtsError(operation, verdict, mts_parse.details(_json(raw)))
        self._rate_backoff.reset()
        parsed = _json(raw)
        if parsed is _NOT_JSON:
            raise _unreadable(operation, "answer is not JSON", status)
        return parsed

    def _rate_limited(self, operation: str, asked: float | None) -> None:
        """Every later call waits: MTS's retryAfter (1 s without one), never over the cap."""
        self.calls["429"] += 1
        backoff = self._rate_backoff
        pause = backoff.next_delay(1.0 if asked is None else asked)
        self._not_before = max(self._not_before, self._clock.monotonic() + pause)
        if asked is not None and asked > backoff.max_retry_after_secs:
            log.warning(
                "mts: %s: rate limited; MTS asked to wait %.0f s (retryAfter), waiting %.0f s, "
                "the cap (retry_after_max_secs), then trying again",
                operation,
                asked,
                pause,
            )
        elif pause >= LONG_PAUSE_SECS:
            log.warning("mts: %s: rate limited; every call waits %.0f s", operation, pause)
        if self._on_pause is not None:
            self._on_pause(asked, pause)


_NOT_JSON: Final = object()


def _json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return _NOT_JSON


def _object(operation: str, body: object) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise _unreadable(operation, "answer is not a JSON object")
    return body


def _unreadable(operation: str, why: str, status: int = 200) -> MtsError:
    return MtsError(operation, Verdict(Outcome.RETRY, status, None, why), why)
