"""A site broker bridged to a central one exactly as docs/mqtt.md says (issue "From install to
first forwarded kWh on a real Pi", item 8).

Two real Mosquitto brokers: the site's (anonymous, on loopback, where the gateway publishes)
and the central one (TLS with a CA made here, passwords, the ACL of docs/mqtt.md). The site
broker's bridge is the block from docs/mqtt.md with only its placeholders filled in (address,
CA file, password; `restart_timeout` shortened so the test does not wait a minute) and the
Home Assistant line enabled ("if HA runs centrally"). The whole daemon runs in-process: a
simulated SDM630, the strict fake Wattics, MQTT to the site broker. Checked centrally:

- `status`, `state`, meter and uplink state, an alert, and Home Assistant discovery arrive
  under the gateway's prefix;
- a command sent centrally reaches its gateway (and no other site) and its answer comes back,
  once;
- while the central broker is down, the site broker and the data path carry on and the site
  sees `bridge` = 0; back, the central broker gets current state and `bridge` = 1;
- when the link itself is lost (the site broker dies), centrally `status` keeps its last value
  while `bridge` turns 0, as the docs warn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from core.health import Health
from drivers.simulator import SimulatedMeter
from gateway.config.schema import Config
from tests.fakes.wattics import FakeWattics
from tests.fixtures.modbus import SDM630_VALUES
from tests.fixtures.mosquitto import MosquittoBroker
from tests.fixtures.wattics import PASSWORD, USERNAME
from tests.gateway.ops.test_monitor_connection import OPENSSL, make_ca, sign
from tests.gateway.ops.test_monitor_daemon import daemon_running
from tests.helpers.eventually import eventually
from tests.paths import REPO

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl binary is not installed")

SITE = "site-42"
BASE = f"meter-gateway/{SITE}"
STREAM = "stream-a"
BRIDGE_PASSWORD = "bridge-Pa55-central"
OPS = ("ops", "ops-Pa55-central")
HOMEASSISTANT = ("homeassistant", "ha-Pa55-central")


def docs_block(after: str) -> str:
    """The first fenced block of docs/mqtt.md after the line containing `after`."""
    text = (REPO / "docs" / "mqtt.md").read_text()
    start = text.index(after)
    match = re.search(r"```[^\n]*\n(.*?)```", text[start:], re.DOTALL)
    assert match is not None, f"no code block after {after!r} in docs/mqtt.md"
    return match.group(1)


def replaced(text: str, old: str, new: str) -> str:
    assert old in text, f"docs/mqtt.md no longer has {old!r}: update this test with it"
    return text.replace(old, new)


def bridge_config(central: MosquittoBroker, ca: Path) -> str:
    block = docs_block("Mosquitto bridge on the site broker")
    block = replaced(
        block, "address mqtt.example.net:8883", f"address {central.host}:{central.port}"
    )
    block = replaced(block, "/etc/mosquitto/certs/central-ca.crt", str(ca))
    block = replaced(block, "remote_password <secret>", f"remote_password {BRIDGE_PASSWORD}")
    block = replaced(block, "restart_timeout 5 60", "restart_timeout 1 2")
    return replaced(block, "# topic homeassistant/", "topic homeassistant/")


def central_acl(path: Path) -> Path:
    """docs/mqtt.md's ACL, the bridge's remote_username in the gateway's place."""
    block = docs_block("restrict it")
    path.write_text(replaced(block, "user gateway-site-42", "user bridge-site-42"))
    return path


def passwords(path: Path) -> Path:
    users = [(f"bridge-{SITE}", BRIDGE_PASSWORD), OPS, HOMEASSISTANT]
    for index, (user, password) in enumerate(users):
        create = ["-c"] if index == 0 else []
        subprocess.run(
            ["mosquitto_passwd", "-b", *create, str(path), user, password],
            check=True,
            capture_output=True,
        )
    path.chmod(0o600)
    return path


class Watcher:
    """A client of one broker keeping every payload per topic; `until` waits for one."""

    def __init__(self, broker: MosquittoBroker, topics: list[str], **client: Any) -> None:
        self.broker = broker
        self.topics = topics
        self.client_options = client
        self.history: dict[str, list[str]] = {}
        self._changed = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watcher:
        self._client = aiomqtt.Client(
            self.broker.host, self.broker.port, timeout=3, **self.client_options
        )
        await self._client.__aenter__()
        for topic in self.topics:
            await self._client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._collect(self._client), name="watcher")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._client is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await self._task
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(None, None, None)

    async def _collect(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            self.history.setdefault(str(message.topic), []).append(message.payload.decode())
            self._changed.set()

    def latest(self, topic: str) -> str | None:
        payloads = self.history.get(topic)
        return payloads[-1] if payloads else None

    async def send(self, topic: str, payload: str) -> None:
        assert self._client is not None
        await self._client.publish(topic, payload, qos=1)

    async def until(
        self, topic: str, check: Callable[[str], bool] | str, timeout: float = 10.0
    ) -> str:
        ok = (lambda payload: payload == check) if isinstance(check, str) else check
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                payload = self.latest(topic)
                if payload is not None and ok(payload):
                    return payload
                await self._changed.wait()


def gateway_config(tmp_path: Path, modbus_port: int, wattics: FakeWattics, mqtt: int) -> Config:
    return Config.model_validate(
        {
            "gateway": {"id": SITE, "data_dir": str(tmp_path), "clock_check": "none"},
            "buses": {"plant": {"type": "modbus-tcp", "host": "127.0.0.1", "port": modbus_port}},
            "meters": [{"id": "incomer", "bus": "plant", "model": "sdm630", "interval": "250ms"}],
            "uplinks": {
                "wattics": {
                    "url": wattics.url,
                    "username": USERNAME,
                    "password": PASSWORD,
                    "retry_initial_secs": 0.05,
                    "retry_max_secs": 0.2,
                    "commit_every_secs": 0.1,
                    "meters": {"incomer": {"id": STREAM}},
                }
            },
            "mqtt": {
                "host": "127.0.0.1",
                "port": mqtt,
                "keepalive_secs": 5,
                "publish_interval_secs": 0.2,
                "reconnect_max_secs": 0.2,
                "homeassistant_discovery": True,
                "commands": {"read": True},
            },
        }
    )


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, Path, Path]:
    directory = tmp_path / "pki"
    ca, _ = make_ca(directory, "central test CA")
    cert, key = sign(directory, "central", "serverAuth", "subjectAltName=IP:127.0.0.1")
    return ca, cert, key


@pytest.fixture
def central(
    mosquitto_factory: Callable[[str], MosquittoBroker],
    pki: tuple[Path, Path, Path],
    tmp_path: Path,
) -> MosquittoBroker:
    ca, cert, key = pki
    return mosquitto_factory(
        f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        "allow_anonymous false\n"
        f"password_file {passwords(tmp_path / 'central.passwd')}\n"
        f"acl_file {central_acl(tmp_path / 'central.acl')}\n"
    )


@pytest.fixture
def site(
    mosquitto_factory: Callable[[str], MosquittoBroker],
    central: MosquittoBroker,
    pki: tuple[Path, Path, Path],
) -> MosquittoBroker:
    return mosquitto_factory(bridge_config(central, pki[0]))


@contextlib.asynccontextmanager
async def at_central(
    central: MosquittoBroker, ca: Path, user: tuple[str, str], topics: list[str]
) -> AsyncIterator[Watcher]:
    context = ssl.create_default_context(cafile=str(ca))
    async with Watcher(
        central, topics, username=user[0], password=user[1], tls_context=context
    ) as watcher:
        yield watcher


def payload(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text)
    return data


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_bridged_site_as_the_docs_configure_it(  # noqa: PLR0917 (fixtures)
    tmp_path: Path,
    sdm630_server: tuple[int, SimulatedMeter],
    fake_wattics: FakeWattics,
    central: MosquittoBroker,
    site: MosquittoBroker,
    pki: tuple[Path, Path, Path],
) -> None:
    ca = pki[0]
    port, meter = sdm630_server
    health = Health()
    config = gateway_config(tmp_path, port, fake_wattics, site.port)
    async with daemon_running(config, health):
        await connected_site(central, site, ca, meter)
        await central_outage(central, site, ca, health, fake_wattics)
        await link_lost(central, site, ca)
        delivered = len(fake_wattics.delivered(STREAM))
        await eventually(lambda: len(fake_wattics.delivered(STREAM)) >= delivered + 2, timeout=5)
    assert fake_wattics.rejected == []


async def connected_site(
    central: MosquittoBroker, site: MosquittoBroker, ca: Path, meter: SimulatedMeter
) -> None:
    async with (
        Watcher(site, ["#"]) as at_site,
        at_central(central, ca, OPS, ["meter-gateway/#"]) as ops,
        at_central(central, ca, HOMEASSISTANT, ["homeassistant/#"]) as homeassistant,
    ):
        # Status, state, alerts and discovery arrive centrally under the gateway's prefix.
        await ops.until(f"{BASE}/bridge", "1")
        await ops.until(f"{BASE}/status", "online")
        gateway = payload(await ops.until(f"{BASE}/state", lambda _: True))
        assert gateway["store_budget_bytes"] > 0
        incomer = await ops.until(f"{BASE}/meters/incomer/state", lambda p: payload(p)["reads"])
        assert payload(incomer)["values"]["voltage_l1"] == SDM630_VALUES["voltage_l1"]
        await ops.until(f"{BASE}/uplinks/wattics/state", lambda p: payload(p)["delivered"] >= 2)
        meter.set_values({"energy_active_import": SDM630_VALUES["energy_active_import"] / 2})
        alert = payload(await ops.until(f"{BASE}/alerts", lambda p: "counters" in p))
        assert alert["source"] == "counters" and "incomer" in alert["message"]
        discovery = f"homeassistant/sensor/meter-gateway_{SITE}/meter_incomer_voltage_l1/config"
        sensor = payload(await homeassistant.until(discovery, lambda _: True))
        assert f"{BASE}/status" in json.dumps(sensor)  # availability follows the gateway

        # A command sent centrally reaches its gateway only, and its answer comes back once.
        await ops.send(f"{BASE}/cmd/meters/incomer/read", json.dumps({"request_id": "c-1"}))
        await ops.send("meter-gateway/site-43/cmd/meters/incomer/read", '{"request_id": "c-2"}')
        result = f"{BASE}/cmd/meters/incomer/read/result"
        answer = payload(await ops.until(result, lambda _: True))
        assert answer["ok"] is True and answer["request_id"] == "c-1"
        assert answer["values"]["voltage_l1"] == SDM630_VALUES["voltage_l1"]
        await asyncio.sleep(1.0)  # time for a looping copy to show up, if there were one
        assert len(ops.history[result]) == 1
        assert len(at_site.history[f"{BASE}/cmd/meters/incomer/read"]) == 1
        assert not any(topic.startswith("meter-gateway/site-43") for topic in at_site.history)


async def central_outage(
    central: MosquittoBroker,
    site: MosquittoBroker,
    ca: Path,
    health: Health,
    fake_wattics: FakeWattics,
) -> None:
    """The central broker goes away: the site and the data path carry on, the site sees it."""
    reads_before = health.meter("incomer").reads
    delivered_before = len(fake_wattics.delivered(STREAM))
    await asyncio.to_thread(central.stop)
    async with Watcher(site, ["#"]) as at_site:
        await at_site.until(f"{BASE}/bridge", "0")
        await at_site.until(f"{BASE}/status", "online")
        await at_site.until(
            f"{BASE}/meters/incomer/state", lambda p: payload(p)["reads"] >= reads_before + 4
        )
        await eventually(
            lambda: len(fake_wattics.delivered(STREAM)) >= delivered_before + 4, timeout=5
        )
        # Back: the bridge reconnects, and the central broker is handed current state.
        await asyncio.to_thread(central.start)
        await at_site.until(f"{BASE}/bridge", "1", timeout=15)
    reads_now = health.meter("incomer").reads
    async with at_central(central, ca, OPS, ["meter-gateway/#"]) as ops:
        await ops.until(f"{BASE}/bridge", "1")
        await ops.until(f"{BASE}/status", "online")
        await ops.until(f"{BASE}/meters/incomer/state", lambda p: payload(p)["reads"] >= reads_now)


async def link_lost(central: MosquittoBroker, site: MosquittoBroker, ca: Path) -> None:
    """The link itself is lost (the site broker dies): centrally, status keeps its last value
    while the bridge's will says 0, so central monitoring must watch both (docs/mqtt.md)."""
    async with at_central(central, ca, OPS, ["meter-gateway/#"]) as ops:
        await ops.until(f"{BASE}/status", "online")
        await asyncio.to_thread(site.kill)
        await ops.until(f"{BASE}/bridge", "0", timeout=30)
        assert ops.latest(f"{BASE}/status") == "online"
