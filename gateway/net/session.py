"""The HTTP session every cloud client keeps, and a bounded answer reader.

One kept-alive aiohttp session per client (Wattics, EnerKey, PTS, MTS, Locus): opened on
first use and again after a close; closing twice is harmless. Every request of every client
passes `allow_redirects=False` (tests/security/test_redirects.py checks the source): a
redirect would hand our credentials to whatever host it names, so it is an error that names
its target (gateway.net.policy.redirect_target), never followed. An answer body is read only up
to a limit, so a garbage answer cannot eat the Pi's memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import aiohttp

#: Bytes of an answer body kept (for the dead-letter table and last_error).
MAX_ANSWER_BYTES: Final = 16_384


async def read_limited(response: aiohttp.ClientResponse, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """At most `limit` bytes of an answer: a garbage answer must not eat the Pi's memory.

    A body read to its end keeps the connection reusable; a longer one is cut (and aiohttp
    closes that connection).
    """
    content = response.content
    data = await content.read(limit)
    if len(data) >= limit or content.at_eof():
        return data[:limit]
    chunks = [data]
    size = len(data)
    while size < limit:
        chunk = await content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


SessionFactory = Callable[[], aiohttp.ClientSession]


class KeptSession:
    """One kept-alive aiohttp session per client, opened on first use and again after a
    close (tests inject `factory`); closing twice is harmless."""

    def __init__(
        self,
        timeout_secs: float,
        *,
        max_connections: int = 100,
        factory: SessionFactory | None = None,
    ) -> None:
        self._timeout_secs = timeout_secs
        self._max_connections = max_connections
        self._factory = factory
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self._factory is not None:
                self._session = self._factory()
            else:
                self._session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self._timeout_secs),
                    connector=aiohttp.TCPConnector(limit=self._max_connections),
                )
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
