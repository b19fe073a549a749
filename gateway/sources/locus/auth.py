"""OAuth2 tokens for the Locus API, kept in memory only.

Invariants: a token is never logged, stored or put into an error message (only the grant and
the HTTP status are); the access token is renewed `margin` seconds before `expires_in` runs
out (at most half its life early), with the refresh token when the password grant gave one,
else by granting again; a refused refresh falls back to a full grant once. Callers hold the
account's request gate (gateway.sources.locus.client) while a token is fetched, so a token call
is one of the "one request at a time" too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import aiohttp

from gateway.clock.clocks import Clock
from gateway.net.policy import (
    Outcome,
    Verdict,
    classify_exception,
    classify_status,
    redirect_target,
)
from gateway.net.session import read_limited
from gateway.sources.locus.config import LocusConfig

log = logging.getLogger(__name__)

TOKEN_PATH = "/oauth/token"


class LocusApiError(Exception):
    """A Locus call failed. `kind` names it for health counters: network, server,
    rate_limited, auth, rejected, not_found, forbidden, garbage."""

    def __init__(self, kind: str, message: str, verdict: Verdict | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.verdict = verdict

    @property
    def retry_after(self) -> float | None:
        return self.verdict.retry_after_secs if self.verdict else None


@dataclass
class _Token:
    access: str
    refresh: str | None
    expires_at: float  # clock.monotonic()


class TokenManager:
    def __init__(self, section: LocusConfig, clock: Clock) -> None:
        self.section = section
        self.clock = clock
        self._token: _Token | None = None
        #: Grants and refreshes made (for health facts and tests; no secrets).
        self.grants = 0
        self.refreshes = 0

    def valid(self) -> bool:
        return self._token is not None and self.clock.monotonic() < self._token.expires_at

    def invalidate(self) -> None:
        """The server refused the access token: the next call renews it (refresh token kept)."""
        if self._token is not None:
            self._token.expires_at = float("-inf")

    @property
    def authorization(self) -> str:
        assert self._token is not None
        return f"Bearer {self._token.access}"

    async def renew(self, session: aiohttp.ClientSession) -> None:
        """Refresh when we can, else grant; a refused refresh is followed by one full grant."""
        token = self._token
        if token is not None and token.refresh is not None:
            try:
                await self._request(session, self._refresh_form(token.refresh), "refresh_token")
                self.refreshes += 1
                return
            except LocusApiError as exc:
                if exc.kind != "auth":
                    raise
                log.info("locus: refresh token refused, authenticating again")
        await self._request(session, self._grant_form(), self.section.grant)
        self.grants += 1

    def _client(self) -> dict[str, str]:
        return {
            "client_id": self.section.client_id.get_secret_value(),
            "client_secret": self.section.client_secret.get_secret_value(),
        }

    def _grant_form(self) -> dict[str, str]:
        section = self.section
        if section.username is not None and section.password is not None:
            return {
                "grant_type": "password",
                **self._client(),
                "username": section.username.get_secret_value(),
                "password": section.password.get_secret_value(),
            }
        return {"grant_type": "client_credentials", **self._client()}

    def _refresh_form(self, refresh: str) -> dict[str, str]:
        return {"grant_type": "refresh_token", **self._client(), "refresh_token": refresh}

    async def _request(
        self, session: aiohttp.ClientSession, form: dict[str, str], grant: str
    ) -> None:
        url = self.section.base_url + TOKEN_PATH
        try:
            async with session.post(
                url, data=form, headers={"Accept": "application/json"}, allow_redirects=False
            ) as response:
                status = response.status
                body = await read_limited(response)
                target = redirect_target(status, response.headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            verdict = classify_exception(exc)
            raise LocusApiError("network", f"token ({grant}): {verdict.detail}", verdict) from exc
        outcome = classify_status(status)
        if outcome is not Outcome.OK:
            # OAuth2 answers a bad grant with 400 (invalid_grant/invalid_client): credentials.
            kind = "auth" if status in (400, 401, 403) else error_kind(status)
            verdict = Verdict(Outcome.AUTH if kind == "auth" else outcome, status)
            # The body of a refusal names the OAuth error; it holds no secret of ours.
            detail = target or " ".join(body.decode("utf-8", "replace").split())[:200]
            raise LocusApiError(kind, f"token ({grant}) refused: HTTP {status} {detail}", verdict)
        self._token = self._parse(body, grant)

    def _parse(self, body: bytes, grant: str) -> _Token:
        try:
            data = json.loads(body)
            access = data["access_token"]
            expires_in = float(data["expires_in"])
        except (ValueError, KeyError, TypeError) as exc:
            # Never echo the body: it may hold a token.
            raise LocusApiError("garbage", f"token ({grant}): unreadable answer") from exc
        if not isinstance(access, str) or not access or expires_in <= 0:
            raise LocusApiError("garbage", f"token ({grant}): unreadable answer")
        refresh = data.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            # A refresh grant may not return a new refresh token: keep using the old one.
            old = self._token.refresh if self._token else None
            refresh = old if grant == "refresh_token" else None
        margin = min(self.section.token_refresh_margin_secs, expires_in / 2)
        return _Token(access, refresh, self.clock.monotonic() + expires_in - margin)


def error_kind(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server"
    if status == 404:
        return "not_found"
    return "rejected"
