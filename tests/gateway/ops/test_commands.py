"""Command dispatch without a broker: a real store, a real poller and a simulated SDM630."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.health import Health
from core.sample import Sample
from drivers.factory import open_readers
from drivers.simulator import SimulatedMeter
from gateway.config.schema import Config, MqttCommandsConfig
from gateway.ops.commands import CommandHandler
from gateway.poller import Poller
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from tests.fixtures.modbus import SDM630_VALUES
from tests.fixtures.network import free_port

ALL_ON = MqttCommandsConfig(read=True, flush=True, pts_submit=True)


def site_config(tmp_path: Path, modbus_port: int) -> Config:
    return Config.model_validate(
        {
            "gateway": {"id": "site-1", "data_dir": str(tmp_path)},
            "buses": {
                "plant": {"type": "modbus-tcp", "host": "127.0.0.1", "port": modbus_port},
                "dead": {"type": "modbus-tcp", "host": "127.0.0.1", "port": free_port()},
            },
            "meters": [
                {"id": "incomer", "bus": "plant", "model": "sdm630", "timeout_secs": 0.5},
                {"id": "gone", "bus": "dead", "model": "sdm630", "timeout_secs": 0.2},
            ],
        }
    )


@dataclass
class Site:
    config: Config
    health: Health
    astore: AsyncStore
    poller: Poller

    def handler(self, commands: MqttCommandsConfig = ALL_ON, **uplinks: object) -> CommandHandler:
        return CommandHandler(
            commands,
            health=self.health,
            meters=self.config.meters,
            read_once=self.poller.read_once,
            store=self.astore,
            uplinks=uplinks,
        )

    async def stored(self, meter: str) -> int:
        return await self.astore.call(self.astore.store.count, meter)


@contextlib.asynccontextmanager
async def open_site(tmp_path: Path, modbus_port: int) -> AsyncIterator[Site]:
    """A store, readers and a poller (not running: commands call its read_once)."""
    config = site_config(tmp_path, modbus_port)
    health = Health()
    astore = AsyncStore(Store(tmp_path / "gateway.sqlite3"))
    try:
        async with open_readers(config) as readers:
            yield Site(config, health, astore, Poller(config.meters, readers, astore, health))
    finally:
        await astore.aclose()


@pytest.fixture
async def site(tmp_path: Path, sdm630_server: tuple[int, SimulatedMeter]) -> AsyncIterator[Site]:
    async with open_site(tmp_path, sdm630_server[0]) as opened:
        yield opened


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


async def test_read_reads_now_stores_the_sample_and_echoes_the_request_id(site: Site) -> None:
    before_ms = int(time.time() * 1000)
    outcome = await site.handler().handle("meters/incomer/read", body(request_id="r-1"))
    assert outcome["ok"] is True, outcome
    assert outcome["request_id"] == "r-1"
    assert outcome["stored"] is True
    assert outcome["meter"] == "incomer"
    assert outcome["values"]["voltage_l1"] == SDM630_VALUES["voltage_l1"]
    assert outcome["values"]["energy_active_import"] == SDM630_VALUES["energy_active_import"]
    assert outcome["ts"].endswith("Z")
    assert await site.stored("incomer") == 1
    [stored] = await site.astore.read("incomer", 0)
    assert stored.sample.ts_ms >= before_ms
    assert site.health.meter("incomer").reads == 1


async def test_read_of_a_meter_that_does_not_answer_reports_why(site: Site) -> None:
    outcome = await site.handler().handle("meters/gone/read", b"")
    assert outcome["ok"] is False
    assert outcome["error"].startswith("read failed: ")
    assert "request_id" not in outcome
    assert await site.stored("gone") == 0
    assert sum(site.health.meter("gone").errors.values()) == 1


async def test_read_not_newer_than_the_stored_sample_is_not_stored(site: Site) -> None:
    future_ms = int(time.time() * 1000) + 3_600_000
    await site.astore.append([Sample("incomer", future_ms, {"power_active": 1.0})])
    outcome = await site.handler().handle("meters/incomer/read", b"")
    assert outcome["ok"] is False
    assert outcome["error"] == "not stored: not newer than the meter's last stored sample"
    assert outcome["values"]["voltage_l1"] == SDM630_VALUES["voltage_l1"]  # still shown
    assert await site.stored("incomer") == 1


async def test_no_read_is_stamped_while_the_clock_is_not_trusted(site: Site) -> None:
    handler = site.handler()
    handler.clock_trusted = lambda: False  # a Pi before NTP answered
    outcome = await handler.handle("meters/incomer/read", b"")
    assert outcome == {
        "ok": False,
        "error": "the system clock is not trusted yet: no sample can be stamped",
    }
    assert await site.stored("incomer") == 0
    assert site.health.meter("incomer").reads == 0


async def test_disabled_commands_are_refused_without_running(site: Site) -> None:
    handler = site.handler(MqttCommandsConfig())  # the default: everything off
    for suffix in ("meters/incomer/read", "uplinks/wattics/flush", "pts/submit"):
        outcome = await handler.handle(suffix, body(request_id=7))
        assert outcome == {"request_id": 7, "ok": False, "error": "command disabled"}
    assert await site.stored("incomer") == 0
    assert site.health.meter("incomer").reads == 0


@pytest.mark.parametrize(
    ("suffix", "payload", "error"),
    [
        ("meters/nobody/read", b"", "unknown meter 'nobody'"),
        ("meters/incomer/reset", b"", "unknown command"),
        ("reboot", b"", "unknown command"),
        ("meters/incomer/read", b"not json", "payload must be empty or a JSON object"),
        ("meters/incomer/read", b"[1, 2]", "payload must be empty or a JSON object"),
        ("uplinks/nobody/flush", b"", "unknown uplink 'nobody'"),
        ("pts/submit", b"", "pts uplink not configured"),
        ("pts/submit", body(dry_run="no"), "dry_run must be true or false"),
    ],
)
async def test_refusals_say_why(site: Site, suffix: str, payload: bytes, error: str) -> None:
    outcome = await site.handler().handle(suffix, payload)
    assert outcome == {"ok": False, "error": error}
    assert await site.stored("incomer") == 0


class FlushableUplink:
    """An uplink offering the optional `flush()` (what the command calls)."""

    name = "flushable"

    def __init__(self) -> None:
        self.flushed = 0

    def streams(self) -> dict[str, str]:
        return {}

    async def run(self) -> None:
        return None

    def flush(self) -> None:
        self.flushed += 1


class PlainUplink:
    name = "plain"

    def streams(self) -> dict[str, str]:
        return {}

    async def run(self) -> None:
        return None


async def test_flush_wakes_an_uplink_that_can_be_flushed(site: Site) -> None:
    uplink = FlushableUplink()
    site.health.uplink("flushable").backlog_rows = 42
    handler = site.handler(flushable=uplink, plain=PlainUplink())
    outcome = await handler.handle("uplinks/flushable/flush", body(request_id="f"))
    assert outcome == {
        "request_id": "f",
        "ok": True,
        "uplink": "flushable",
        "backlog_rows": 42,
        "paused_reason": None,
    }
    assert uplink.flushed == 1
    refused = await handler.handle("uplinks/plain/flush", b"")
    assert refused == {"ok": False, "error": "uplink 'plain' cannot be flushed"}


def test_own_answers_are_not_commands() -> None:
    assert CommandHandler.is_result("meters/incomer/read/result")
    assert CommandHandler.is_result("result")
    assert not CommandHandler.is_result("meters/result-meter/read")


def test_refusal_echoes_the_request_id_when_it_can() -> None:
    assert CommandHandler.refusal(body(request_id="x"), "busy") == {
        "request_id": "x",
        "ok": False,
        "error": "busy",
    }
    assert CommandHandler.refusal(b"{", "busy") == {"ok": False, "error": "busy"}
