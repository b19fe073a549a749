"""What every fake cloud shares: an aiohttp server on loopback, started by `async with`.

A subclass provides `host`, `port` (0: a free one, replaced by the bound port on start) and
`_handle(request)`, which answers every path and method; `ssl_context` (optional) serves TLS.
"""

from __future__ import annotations

import ssl
from ipaddress import ip_address
from typing import Self

from aiohttp import web


class LoopbackServer:
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop serving; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def is_loopback_host(host_header: str) -> bool:
    """Does a Host header name a loopback address (how tests and the demo reach a fake)?
    A fake that plays a remote service refuses plain http to any other name: the gateway's
    config refuses such a URL already (core.config_base.service_url)."""
    host = host_header if host_header.endswith("]") else host_header.rsplit(":", 1)[0]
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False
