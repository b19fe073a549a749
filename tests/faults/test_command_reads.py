"""An MQTT `read` command just before a boundary must never take the boundary sample's place.

The meter sits behind a TCP proxy that delays every answer (a slow line), so a command sent
50 ms before a boundary finishes after it. Before, its reading was stored stamped "now" (after
the boundary) and the poller's boundary sample, stamped with the boundary, was then refused as
older: every such boundary was lost. Now every boundary has its sample, against the real daemon
and a real Mosquitto, and each command is answered with the values it read.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from drivers.simulator import serve_modbus_tcp
from gateway.daemon import DB_FILE
from tests.faults.conftest import (
    DaemonProcess,
    long_form,
    sdm630_meters,
    slow_proxy,
    stored_stamps,
)
from tests.fixtures.mosquitto import MosquittoBroker
from tests.helpers.eventually import eventually

INTERVAL_S = 1.0
BOUNDARIES = 8 if long_form() else 4
#: Added to every answer of the meter: each command read lasts a few of these.
LATENCY_S = 0.08

CONFIG = """\
gateway: {{id: reads, timezone: UTC, data_dir: "{data_dir}", clock_check: none}}
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: {modbus_port}, timeout_secs: 1}}
meters:
  - {{id: m1, bus: plant, unit: 1, model: sdm630, interval_secs: {interval}}}
mqtt:
  host: 127.0.0.1
  port: {mqtt_port}
  commands: {{read: true}}
"""


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_read_command_just_before_a_boundary_never_displaces_its_sample(
    tmp_path: Path,
    daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess],
    mosquitto_factory: Callable[[str], MosquittoBroker],
) -> None:
    broker = mosquitto_factory("")
    data_dir = tmp_path / "data"
    topic = "meter-gateway/reads/cmd/meters/m1/read"
    answers: list[dict[str, object]] = []
    async with (
        serve_modbus_tcp(sdm630_meters(1)) as modbus,
        slow_proxy(modbus.port, LATENCY_S) as port,
    ):
        config = tmp_path / "site.yaml"
        config.write_text(
            CONFIG.format(
                data_dir=data_dir, modbus_port=port, mqtt_port=broker.port, interval=INTERVAL_S
            )
        )
        daemon = daemon_factory(config, {})
        await daemon.start()
        await daemon.wait_running()
        await eventually(lambda: "MQTT connected" in daemon.log_text(), timeout=10)
        async with aiomqtt.Client(broker.host, broker.port, identifier="operator") as operator:
            await operator.subscribe(f"{topic}/result", qos=1)
            boundaries: list[int] = []
            first = math.ceil(time.time() / INTERVAL_S + 1) * INTERVAL_S
            for n in range(BOUNDARIES):
                boundary = first + n * INTERVAL_S
                await asyncio.sleep(max(0.0, boundary - 0.05 - time.time()))
                await operator.publish(topic, json.dumps({"request_id": n}), qos=1)
                boundaries.append(round(boundary * 1000))
                async with asyncio.timeout(5):
                    async for message in operator.messages:
                        answers.append(json.loads(bytes(message.payload)))  # type: ignore[arg-type]
                        break
        last = boundaries[-1]
        await eventually(
            lambda: max(stored_stamps(data_dir / DB_FILE).get("m1", [0])) >= last,
            timeout=5,
            what="the last boundary's sample",
        )
        assert await daemon.stop() == 0
    stored = set(stored_stamps(data_dir / DB_FILE)["m1"])
    assert [b for b in boundaries if b not in stored] == []
    assert [a["request_id"] for a in answers] == list(range(BOUNDARIES))
    assert all(a["ok"] and a["meter"] == "m1" and a["values"] for a in answers), answers
