"""The MQTT side of a hostile world, against the real daemon and a real Mosquitto.

- A broker that goes away (killed, several times, while commands and telemetry are in flight)
  and comes back: the daemon reconnects, and asyncio never logs "Future exception was never
  retrieved" / "Task exception was never retrieved" (every future retrieved or cancelled).
- A command whose fields are huge (a 5 MB `request_id`, a long topic): refused with a short
  answer that does not echo them, and the daemon goes on answering normal commands.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from drivers.simulator import serve_modbus_tcp
from tests.faults.conftest import DaemonProcess, long_form, sdm630_meters
from tests.fixtures.mosquitto import MosquittoBroker
from tests.helpers.eventually import eventually

OUTAGES = 8 if long_form() else 4
#: Meters publishing their values at QoS 1: messages in flight whenever the broker dies.
METERS = 8


def _meters(count: int) -> str:
    return "\n".join(
        f"  - {{id: m{unit}, bus: plant, unit: {unit}, model: sdm630, interval_secs: 100ms}}"
        for unit in range(1, count + 1)
    )


CONFIG = """\
gateway: {{id: hostile, timezone: UTC, data_dir: "{data_dir}", clock_check: none}}
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: {modbus_port}, timeout_secs: 0.5}}
meters:
{meters}
mqtt:
  host: 127.0.0.1
  port: {mqtt_port}
  timeout_secs: 0.5
  reconnect_max_secs: 0.3
  publish_interval_secs: 0.2
  publish_values: true
  values_qos: 1
  commands: {{read: true}}
  homeassistant_discovery: true
"""


async def _command(
    broker: MosquittoBroker, topic: str, payload: bytes, *, timeout: float = 10
) -> bytes:
    """Publish one command and wait for its answer; the answer's raw payload."""
    async with aiomqtt.Client(broker.host, broker.port, identifier="operator") as client:
        await client.subscribe(f"{topic}/result", qos=1)
        await client.publish(topic, payload, qos=1)
        async with asyncio.timeout(timeout):
            async for message in client.messages:
                return bytes(message.payload)  # type: ignore[arg-type]
    raise AssertionError("no answer")


def _never_retrieved(log: str) -> list[str]:
    return [line for line in log.splitlines() if "never retrieved" in line]


@pytest.mark.slow
@pytest.mark.timeout(90 if long_form() else 45)
async def test_broker_outages_leave_no_unretrieved_future(
    tmp_path: Path,
    daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess],
    mosquitto_factory: Callable[[str], MosquittoBroker],
) -> None:
    broker = mosquitto_factory("")
    async with serve_modbus_tcp(sdm630_meters(METERS)) as modbus:
        config = tmp_path / "site.yaml"
        config.write_text(
            CONFIG.format(
                data_dir=tmp_path / "data",
                modbus_port=modbus.port,
                mqtt_port=broker.port,
                meters=_meters(METERS),
            )
        )
        daemon = daemon_factory(config, {})
        await daemon.start()
        await daemon.wait_running()
        topic = "meter-gateway/hostile/cmd/meters/m1/read"
        connects = ("MQTT connected", "is back after")

        def sessions() -> int:
            text = daemon.log_text()
            return sum(text.count(marker) for marker in connects)

        await eventually(lambda: sessions() >= 1, timeout=10, what="a first connection")
        assert json.loads(await _command(broker, topic, b""))["meter"] == "m1"
        for outage in range(OUTAGES):
            # The broker dies while the daemon is busy on it: just after a (re)connect, in the
            # subscribe / online / discovery burst, with QoS 1 values in flight.
            broker.kill()
            await asyncio.sleep(0.3)  # reconnect attempts against a dead port
            broker.start()
            await eventually(
                lambda n=outage + 2: sessions() >= n,
                timeout=10,
                what="the daemon back on the broker",
            )
        await asyncio.sleep(0.5)
        await eventually(
            lambda: daemon.log_text().count("is back after") >= OUTAGES,
            timeout=10,
            what="the daemon back on the broker",
        )
        assert json.loads(await _command(broker, topic, b""))["meter"] == "m1"
        assert await daemon.stop() == 0
    assert _never_retrieved(daemon.all_logs()) == []


@pytest.mark.timeout(45)
async def test_huge_command_fields_are_refused_without_being_echoed(
    tmp_path: Path,
    daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess],
    mosquitto_factory: Callable[[str], MosquittoBroker],
) -> None:
    broker = mosquitto_factory("")
    async with serve_modbus_tcp(sdm630_meters(1)) as modbus:
        config = tmp_path / "site.yaml"
        config.write_text(
            CONFIG.format(
                data_dir=tmp_path / "data",
                modbus_port=modbus.port,
                mqtt_port=broker.port,
                meters=_meters(1),
            )
        )
        daemon = daemon_factory(config, {})
        await daemon.start()
        await daemon.wait_running()
        await eventually(lambda: "MQTT connected" in daemon.log_text(), timeout=10)
        base = "meter-gateway/hostile/cmd"
        huge = json.dumps({"request_id": "r" * 5_000_000}).encode()
        answer = await _command(broker, f"{base}/meters/m1/read", huge)
        assert len(answer) < 1024, len(answer)
        assert json.loads(answer)["ok"] is False
        long_id = json.dumps({"request_id": "x" * 200}).encode()
        answer = await _command(broker, f"{base}/meters/m1/read", long_id)
        assert len(answer) < 1024 and json.loads(answer)["ok"] is False
        huge_int = json.dumps({"request_id": 10**100}).encode()
        assert json.loads(await _command(broker, f"{base}/meters/m1/read", huge_int))["ok"] is False
        long_meter = "m" * 60_000  # a topic near MQTT's limit: the meter id is not echoed whole
        answer = await _command(broker, f"{base}/meters/{long_meter}/read", b"")
        assert len(answer) < 1024 and json.loads(answer)["ok"] is False
        # normal commands still work, and carry their request_id back
        answer = await _command(broker, f"{base}/meters/m1/read", b'{"request_id": "op-7"}')
        assert json.loads(answer)["request_id"] == "op-7"
        assert json.loads(answer)["meter"] == "m1"
        assert await daemon.stop() == 0
    log = daemon.all_logs()
    assert "r" * 1000 not in log and "m" * 1000 not in log
