"""With a password or token configured, every request to the status server needs it."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import aiohttp

from core.health import Health
from gateway.config.schema import Config, HttpConfig
from gateway.ops.figures import StoreFigures
from gateway.ops.history import History
from gateway.ops.http_server import serve_forever
from gateway.ops.status_facts import LiveState
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from tests.helpers.eventually import eventually

TOKEN = "token-Qx7-secret"
PASSWORD = "password-Qx7-secret"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_the_token_or_the_basic_credentials_are_required(tmp_path: Path) -> None:
    http = HttpConfig(listen="127.0.0.1:0", token=TOKEN, password=PASSWORD)
    config = Config.model_validate({"gateway": {"id": "site-1", "data_dir": str(tmp_path)}})
    astore = AsyncStore(Store(tmp_path / "g.sqlite3"))
    health = Health()
    live = LiveState(
        config=config,
        health=health,
        version="t",
        figures=StoreFigures(astore.store.path, {}, None),
        history=History(),
        astore=astore,
    )
    server = asyncio.create_task(serve_forever(http, live, alert=health.alert))
    try:
        url = await eventually(lambda: live.page_url, what="the server to listen")
        async with aiohttp.ClientSession() as session:
            for headers, expected in [
                ({}, 401),
                ({"Authorization": "Bearer wrong-token-123"}, 401),
                ({"Authorization": basic("meter-gateway", "wrong")}, 401),
                ({"Authorization": basic("someone", PASSWORD)}, 401),
                ({"Authorization": "Basic !!!not-base64"}, 401),
                ({"Authorization": f"Bearer {TOKEN}"}, 200),
                ({"Authorization": basic("meter-gateway", PASSWORD)}, 200),
            ]:
                async with session.get(f"{url}metrics", headers=headers) as response:
                    assert response.status == expected, headers
                    if expected == 401:
                        assert response.headers["WWW-Authenticate"].startswith("Basic")
                        assert TOKEN not in await response.text()
            # With a secret, any Host name is fine (the LAN's name for the box).
            auth = {"Authorization": f"Bearer {TOKEN}", "Host": "gateway.site:8480"}
            async with session.get(f"{url}api/status", headers=auth) as response:
                assert response.status == 200
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        await astore.aclose()


async def test_a_port_in_use_is_alerted_once_and_the_daemon_goes_on(tmp_path: Path) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    config = Config.model_validate({"gateway": {"id": "site-1", "data_dir": str(tmp_path)}})
    astore = AsyncStore(Store(tmp_path / "g.sqlite3"))
    health = Health()
    live = LiveState(
        config=config,
        health=health,
        version="t",
        figures=StoreFigures(astore.store.path, {}, None),
        history=History(),
        astore=astore,
    )
    server = asyncio.create_task(
        serve_forever(HttpConfig(listen=f"127.0.0.1:{port}"), live, alert=health.alert)
    )
    try:
        await eventually(lambda: health.alerts_total == 1, what="one alert")
        assert "cannot listen on" in health.alerts[0].message
        assert not server.done()
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        blocker.close()
        await blocker.wait_closed()
        await astore.aclose()
