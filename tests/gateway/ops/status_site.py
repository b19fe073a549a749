"""A site for the status page tests: the whole daemon in-process on a simulated SDM630, the
strict fake Wattics, and its status server on a free loopback port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp

from core.health import Health
from gateway.config.schema import Config
from gateway.daemon import Daemon
from gateway.ops import status_plane
from tests.fakes.wattics import FakeWattics
from tests.gateway.ops.test_monitor_daemon import daemon_running
from tests.helpers.eventually import eventually

#: Distinctive credentials, so a leak anywhere is found by a plain substring search.
USER = "gw-user-7781"
PASSWORD = "pw-Zq81-never-shown"
STREAM = "stream-a"


def status_config(
    tmp_path: Path, modbus_port: int, wattics: FakeWattics, *, interval: str = "250ms"
) -> Config:
    return Config.model_validate(
        {
            "gateway": {"id": "site-1", "data_dir": str(tmp_path), "clock_check": "none"},
            "buses": {
                "plant": {
                    "type": "modbus-tcp",
                    "host": "127.0.0.1",
                    "port": modbus_port,
                    "timeout_secs": 0.5,
                }
            },
            "meters": [{"id": "incomer", "bus": "plant", "model": "sdm630", "interval": interval}],
            "uplinks": {
                "wattics": {
                    "url": wattics.url,
                    "username": USER,
                    "password": PASSWORD,
                    "retry_initial_secs": 0.05,
                    "retry_max_secs": 0.2,
                    "commit_every_secs": 0.1,
                    "auth_probe_secs": 0.2,
                    "meters": {"incomer": {"id": STREAM}},
                }
            },
            "http": {"listen": "127.0.0.1:0"},
        }
    )


@contextlib.asynccontextmanager
async def status_site(
    config: Config, health: Health, *, measure_every_s: float | None = 1.0
) -> AsyncIterator[tuple[Daemon, str]]:
    """The running daemon and its status page URL. The store figures (backlog, oldest waiting)
    are measured every `measure_every_s` (None: the daemon's MEASURE_EVERY_S, 10 s), so that
    a test sees a backlog change in a second, not in ten."""
    with contextlib.ExitStack() as patches:
        if measure_every_s is not None:
            patches.enter_context(
                mock.patch.object(status_plane, "MEASURE_EVERY_S", measure_every_s)
            )
        async with daemon_running(config, health) as daemon:

            def url() -> str | None:
                return None if daemon.live is None else daemon.live.page_url

            yield daemon, await eventually(url, timeout=5.0, what="the status page to listen")


async def get_text(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as response:
        assert response.status == 200, (url, response.status)
        return await response.text()


async def get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url) as response:
        assert response.status == 200, (url, response.status)
        data: dict[str, Any] = await response.json()
        return data


class Dom(HTMLParser):
    """The served page as (tag, data- attributes in scope, text) of the elements with `data-`
    attributes: an element's scope has its ancestors' data- attributes too, its text its
    descendants' (enough to check what a person sees, and where)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], list[str]]] = []
        self._open: list[tuple[str, dict[str, str], list[str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("meta", "link", "br", "img", "input"):
            return
        scope = dict(self._open[-1][1]) if self._open else {}
        own = {k: v or "" for k, v in attrs if k.startswith("data-")}
        element = (tag, {**scope, **own}, [])
        self._open.append(element)
        if own:
            self.elements.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, _, text in self._open:
            text.append(data)

    def find(self, **attrs: str) -> list[str]:
        """The texts of the elements with all `attrs` in scope (data_meter="x": data-meter)."""
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [
            " ".join(" ".join(text).split())
            for _, element_attrs, text in self.elements
            if all(element_attrs.get(k) == v for k, v in wanted.items())
        ]
