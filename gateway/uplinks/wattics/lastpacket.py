"""Wattics' last processed packet of a datapoint: `GET <push url>?stream=<id>` (NOTES.md).

The answer's shape is UNKNOWN, so it is read defensively: the latest `tsISO8601` anywhere in
a JSON answer. Anything else (no JSON, another status, no timestamp) means "cannot tell".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import tzinfo

import aiohttp
import yarl

from gateway.clock.clocks import Clock
from gateway.net.policy import TRANSPORT_ERRORS, classify_exception
from gateway.net.session import read_limited
from gateway.timefmt import local_iso8601_ms
from gateway.uplinks.wattics.packets import last_timestamp_ms

#: The uplink's logger (journal searches keep working).
log = logging.getLogger("gateway.uplinks.wattics.uplink")


async def last_processed_ms(
    session: aiohttp.ClientSession, url: yarl.URL, authorization: str, stream: str
) -> int | str | None:
    """The epoch ms of Wattics' last packet of `stream`; None: it has none (404); a string:
    why it cannot tell (for the uplink's one log line)."""
    try:
        async with session.get(
            url.update_query(stream=stream),
            headers={"Authorization": authorization},
            allow_redirects=False,
        ) as response:
            if response.status == 404:
                return None  # the stream has no packet yet: nothing to skip
            if response.status != 200:
                return f"GET answered {response.status}"
            answer = await read_limited(response, 1 << 20)
    except TRANSPORT_ERRORS as exc:
        return classify_exception(exc).detail
    try:
        data = json.loads(answer)
    except (ValueError, RecursionError):  # nested beyond the parser: not JSON to us
        return "the answer is not JSON"
    last = last_timestamp_ms(data)
    return "no tsISO8601 in the answer" if last is None else last


class LastPacket:
    """Asks Wattics what it already has, and says once per run when it cannot tell."""

    def __init__(
        self,
        uplink: str,
        site_tz: tzinfo,
        clock: Clock,
        ask: Callable[[str], Awaitable[int | str | None]],
    ) -> None:
        self._name = uplink
        self._tz = site_tz
        self._clock = clock
        self._ask = ask
        self._fallback_logged = False

    async def last_ms(self, stream: str) -> int | None:
        """Wattics' last processed packet time for `stream`; None when it cannot tell."""
        found = await self._ask(stream)
        if isinstance(found, str):
            self._no_resync(stream, found)
            return None
        return found

    async def resync(self, stream: str) -> int | None:
        """The time up to which stored packets need not be sent again (Wattics has them,
        and would discard them anyway); None: send from the cursor."""
        last_ms = await self.last_ms(stream)
        if last_ms is None:
            return None
        when = local_iso8601_ms(last_ms, self._tz)
        if last_ms > self._clock.time() * 1000 + 3_600_000:
            log.warning(
                "%s/%s: Wattics' last packet is stamped %s, in the future: it discards every "
                "packet before that time (a clock that was wrong?)",
                self._name,
                stream,
                when,
            )
        else:
            log.info(
                "%s/%s: Wattics has packets up to %s; stored samples up to then are not re-sent",
                self._name,
                stream,
                when,
            )
        return last_ms

    def _no_resync(self, stream: str, why: str) -> None:
        """Say once per run that delivery falls back to at-least-once, and why."""
        if not self._fallback_logged:
            self._fallback_logged = True
            log.warning(
                "%s: cannot ask Wattics for its last packet (%s, stream %s): delivery is "
                "at-least-once; after a crash up to one commit group per stream may be sent "
                "twice (Wattics discards those as out of order)",
                self._name,
                why,
                stream,
            )
        else:
            log.debug("%s/%s: no resync (%s)", self._name, stream, why)
