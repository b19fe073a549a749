"""The daemon's local HTTP server: the status page (`/`), its fragment (`/fragment`), the status
document (`/api/status`), the chart history (`/api/history`) and Prometheus `/metrics`.

Invariants:
- Read-only: GET and HEAD only, no command of any kind; nothing it does reaches a meter, a
  cloud or the store's writer.
- Cheap whatever the clients do: the status document, the rendered fragment and the metrics
  are built at most once per `CACHE_S` and served from that snapshot to every client.
- Guarded: with a password or token configured every request needs it (compared in constant
  time); without one (only possible on loopback, gateway.config.schema.HttpConfig) a request
  must name a loopback host, so a web page the installer visits cannot read it through DNS
  rebinding. Responses forbid framing, sniffing, caching and any script but our own.
- It never stops the data path: failing to listen is alerted once and retried every
  `RETRY_LISTEN_S`; an error in a handler is a 500 for that request only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from gateway.config.schema import HttpConfig, is_loopback_host
from gateway.ops.history import History
from gateway.ops.status_assess import Attention, assess
from gateway.ops.status_facts import LiveState, live_facts
from gateway.ops.status_page import render

log = logging.getLogger(__name__)

#: Snapshots are rebuilt at most this often, however many requests come.
CACHE_S = 1.0
RETRY_LISTEN_S = 30.0
#: Prometheus' text exposition format.
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATIC = {"page.css": "text/css", "page.js": "text/javascript"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Cached:
    """One value rebuilt at most every CACHE_S."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._at = -CACHE_S
        self._value: Any = None

    def get(self) -> Any:
        now = time.monotonic()
        if now - self._at >= CACHE_S:
            self._value = self._build()
            self._at = now
        return self._value


class StatusService:
    """The handlers, over the running daemon's LiveState."""

    def __init__(self, live: LiveState) -> None:
        self.live = live
        self._facts = _Cached(self._build_facts)
        self._fragment = _Cached(self._build_fragment)
        self._page = _Cached(self._build_page)
        self._status = _Cached(self._build_status)
        self._history = _Cached(self._build_history)
        self._metrics = _Cached(self._build_metrics)
        self._static = {
            name: (resources.files("gateway.ops.status_page") / "static" / name).read_bytes()
            for name in STATIC
        }

    @property
    def history(self) -> History:
        return self.live.history

    def facts(self) -> tuple[dict[str, Any], list[Attention], int]:
        value: tuple[dict[str, Any], list[Attention], int] = self._facts.get()
        return value

    def _build_facts(self) -> tuple[dict[str, Any], list[Attention], int]:
        now = int(time.time() * 1000)
        doc = live_facts(self.live, now_ms=now)
        return doc, assess(doc, now), now

    def _build_page(self) -> bytes:
        doc, attention, now = self.facts()
        return render.page(doc, attention, self.history, now).encode()

    def _build_fragment(self) -> bytes:
        doc, attention, now = self.facts()
        return render.fragment(doc, attention, self.history, now).encode()

    def _build_metrics(self) -> bytes:
        from gateway.ops import metrics  # prometheus_client: loaded at the first scrape only

        collector = metrics.StatusCollector(
            lambda: self.facts()[0], attention=lambda: len(self.facts()[1])
        )
        return metrics.exposition(collector)

    # -- handlers ----------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page.get(), content_type="text/html", charset="utf-8")

    async def fragment(self, request: web.Request) -> web.Response:
        return web.Response(body=self._fragment.get(), content_type="text/html", charset="utf-8")

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(body=self._status.get(), content_type="application/json")

    def _build_status(self) -> bytes:
        doc, attention, now = self.facts()
        body = {
            **doc,
            "now_ms": now,
            "running": True,
            "ok": not attention,
            "attention": [item.as_json() for item in attention],
        }
        return _dumps(body).encode()

    async def history_json(self, request: web.Request) -> web.Response:
        return web.Response(body=self._history.get(), content_type="application/json")

    def _build_history(self) -> bytes:
        history = self.history
        body = {
            "bucket_ms": history.bucket_ms,
            "power_w": {m: s.points() for m, s in history.power.items()},
            "counter": {
                m: {"channel": history.counter_channel.get(m), "points": s.points()}
                for m, s in history.counter.items()
            },
            "backlog": {u: s.points() for u, s in history.backlog.items()},
        }
        return _dumps(body).encode()

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.get(), headers={"Content-Type": METRICS_TYPE})

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._static:
            raise web.HTTPNotFound()
        return web.Response(body=self._static[name], content_type=STATIC[name], charset="utf-8")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _host_name(host: str) -> str:
    """The host part of a Host header (`[::1]:8480` -> `::1`, `localhost:8480` -> `localhost`)."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def authorized(config: HttpConfig, header: str) -> bool:
    """Does an Authorization header carry the configured token or Basic credentials?"""
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if config.token is not None and scheme.lower() == "bearer":
        return hmac.compare_digest(value.encode(), config.token.get_secret_value().encode())
    if config.password is not None and scheme.lower() == "basic":
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        good_user = hmac.compare_digest(user.encode(), config.username.encode())
        good_password = hmac.compare_digest(
            password.encode(), config.password.get_secret_value().encode()
        )
        return bool(sep) and good_user and good_password
    return False


def _guard(config: HttpConfig) -> Any:
    """The middleware that authenticates (or checks the host) and adds the security headers."""
    challenge = (
        'Basic realm="meter-gateway", charset="UTF-8"'
        if config.password is not None
        else 'Bearer realm="meter-gateway"'
    )

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if config.secured:
            if not authorized(config, request.headers.get("Authorization", "")):
                raise web.HTTPUnauthorized(
                    text="authentication required\n", headers={"WWW-Authenticate": challenge}
                )
        elif not is_loopback_host(_host_name(request.host)):
            raise web.HTTPMisdirectedRequest(text="use http://127.0.0.1 (or localhost)\n")
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    return guard


def application(config: HttpConfig, service: StatusService) -> web.Application:
    app = web.Application(middlewares=[_guard(config)], client_max_size=4096)
    app.router.add_get("/", service.page)
    app.router.add_get("/fragment", service.fragment)
    app.router.add_get("/api/status", service.status)
    app.router.add_get("/api/history", service.history_json)
    app.router.add_get("/metrics", service.metrics)
    app.router.add_get("/static/{name}", service.static)
    return app


async def serve_forever(
    config: HttpConfig,
    live: LiveState,
    *,
    alert: Callable[[str, str], None],
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve until cancelled; a listen that fails is alerted once and retried."""
    service = StatusService(live)
    runner = web.AppRunner(
        application(config, service), access_log=None, handle_signals=False, shutdown_timeout=0.5
    )
    await runner.setup()
    host, port = config.host_port
    alerted = False
    try:
        while True:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
                break
            except OSError as exc:
                if not alerted:
                    alert(
                        "status page",
                        f"cannot listen on {config.listen} ({exc.strerror or exc}); the page "
                        f"and /metrics are off, trying again every {RETRY_LISTEN_S:g} s",
                    )
                    alerted = True
                await asyncio.sleep(RETRY_LISTEN_S)
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0]
        url = f"http://{shown}:{bound[1]}/"
        live.page_url = url
        log.info("status page at %s (metrics at %smetrics)", url, url)
        if alerted:
            log.warning("status page: listening again on %s", config.listen)
        if on_listening is not None:
            on_listening(url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
