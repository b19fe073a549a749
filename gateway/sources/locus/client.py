"""HTTP calls to the Locus v3 API: one at a time per account, gzip, one token retry.

Invariants:
- At most one request is in flight per account (base URL + client id + user) across the whole
  gateway: every call, token calls included, holds that account's gate. Locus allows one
  request at a time by default and answers a second one with 429.
- After a 429 the whole account waits (capped, jittered backoff from gateway.net.policy;
  a Retry-After is honoured), not only the meter that got it.
- A 401 renews the token and repeats the call once; a second 401 is an `auth` error.
- Answers are asked for with `Accept-Encoding: gzip` (aiohttp decompresses); JSON fields we do
  not know are ignored (the v3 API adds fields within a version).
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from core.backoff import Backoff
from gateway.clock.clocks import Clock
from gateway.net.policy import Outcome, classify_exception, classify_response
from gateway.sources.locus.auth import LocusApiError, TokenManager, error_kind
from gateway.sources.locus.config import LocusConfig

log = logging.getLogger(__name__)

#: Largest answer read (a 30-day window of 5-minute data with a few fields is ~1 MB).
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass
class AccountGate:
    """The one-request-at-a-time lock of one Locus account and its shared 429 pause."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    resume_at: float = 0.0  # clock.monotonic()
    backoff: Backoff = field(default_factory=lambda: Backoff(1.0, 300.0))
    #: Requests sent through this gate (health facts, tests).
    requests: int = 0
    rate_limited: int = 0


_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, ...], AccountGate]]
_GATES = weakref.WeakKeyDictionary()


def account_gate(section: LocusConfig) -> AccountGate:
    """The gate shared by everything in this event loop that talks to the same account."""
    loop = asyncio.get_running_loop()
    user = section.username.get_secret_value() if section.username else ""
    key = (section.base_url, section.client_id.get_secret_value(), user)
    gates = _GATES.setdefault(loop, {})
    if key not in gates:
        gates[key] = AccountGate(
            backoff=Backoff(section.retry_initial_secs, section.retry_max_secs)
        )
    return gates[key]


class LocusClient:
    """`async with LocusClient(section, clock) as client: await client.get(path, params)`."""

    def __init__(self, section: LocusConfig, clock: Clock) -> None:
        self.section = section
        self.clock = clock
        self.tokens = TokenManager(section, clock)
        self._session: aiohttp.ClientSession | None = None
        self._gate: AccountGate | None = None

    async def __aenter__(self) -> LocusClient:
        self._gate = account_gate(self.section)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.section.timeout_secs),
            raise_for_status=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def gate(self) -> AccountGate:
        assert self._gate is not None, "use LocusClient in `async with`"
        return self._gate

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """GET `path` (under base_url) and return its JSON object, or raise LocusApiError."""
        session = self._session
        assert session is not None, "use LocusClient in `async with`"
        gate = self.gate
        async with gate.lock:
            wait = gate.resume_at - self.clock.monotonic()
            if wait > 0:
                await self.clock.sleep(wait)
            for attempt in (1, 2):
                if not self.tokens.valid():
                    gate.requests += 1
                    try:
                        await self.tokens.renew(session)
                    except LocusApiError as exc:
                        self._after_failure(exc)
                        raise
                status, headers, body = await self._send(session, path, params)
                gate.requests += 1
                if status == 401 and attempt == 1:
                    log.info("locus: access token refused, renewing it")
                    self.tokens.invalidate()
                    continue
                return self._answer(path, status, headers, body)
        raise AssertionError("unreachable")

    async def _send(
        self, session: aiohttp.ClientSession, path: str, params: Mapping[str, str] | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        headers = {
            "Accept": "application/json",
            "Accept-Encoding": "gzip",
            "Authorization": self.tokens.authorization,
        }
        try:
            async with session.get(
                self.section.base_url + path, params=params, headers=headers, allow_redirects=False
            ) as response:
                body = await response.content.read(MAX_BODY_BYTES)
                return response.status, dict(response.headers), body
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            verdict = classify_exception(exc)
            raise LocusApiError("network", f"{path}: {verdict.detail}", verdict) from exc

    def _answer(
        self, path: str, status: int, headers: Mapping[str, str], body: bytes
    ) -> dict[str, Any]:
        verdict = classify_response(status, headers, body, now=self.clock.time())
        if verdict.outcome is Outcome.OK:
            self.gate.backoff.reset()
            try:
                data = json.loads(body)
            except ValueError as exc:
                raise LocusApiError("garbage", f"{path}: answer is not JSON") from exc
            if not isinstance(data, dict):
                raise LocusApiError("garbage", f"{path}: answer is not a JSON object")
            return data
        if status == 401:
            kind = "auth"
        elif status == 403:
            kind = "forbidden"  # "authenticating will make no difference": the entity id
        else:
            kind = error_kind(status)
        error = LocusApiError(kind, f"{path}: {verdict.detail}", verdict)
        self._after_failure(error)
        raise error

    def _after_failure(self, error: LocusApiError) -> None:
        if error.kind != "rate_limited":
            return
        gate = self.gate
        gate.rate_limited += 1
        delay = gate.backoff.next_delay(error.retry_after)
        gate.resume_at = max(gate.resume_at, self.clock.monotonic() + delay)
        log.warning("locus: rate limited (429), all calls wait %.1f s", delay)
