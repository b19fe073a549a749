"""Every discovery message the gateway publishes, validated by Home Assistant's own code.

Outside material: homeassistant 2023.8.0 (PyPI; pinned in tests/ha/requirements.txt, the oldest
release docs/mqtt.md says we support), its MQTT discovery schemas
(homeassistant/components/mqtt/{discovery,sensor,mixins,abbreviations}.py), run through
tests/ha/ha_validate.py in .venv-ha. `./dev.sh test-ha` sets MG_HA_PYTHON and runs this file
(CI runs it after `./dev.sh test`); elsewhere it is skipped, since the gateway's own venv does
not carry Home Assistant.

The gateway under test is the real one: a representative multi-meter config parsed by the
config loader, its meters described as the daemon does, the Monitor publishing to a real
Mosquitto, and what a newcomer is handed (the retained messages) is what is validated.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from core.health import Health, MeterState
from gateway.config.loader import parse_config
from gateway.ops.discovery import Inventory, describe_meters
from gateway.ops.monitor import Monitor
from tests.fixtures.mosquitto import MosquittoBroker
from tests.gateway.ops.test_monitor import Subscriber, mqtt_config, retained_under, running

HA_PYTHON = os.environ.get("MG_HA_PYTHON", "")
VALIDATOR = Path(__file__).with_name("ha_validate.py")

pytestmark = pytest.mark.skipif(
    not HA_PYTHON, reason="Home Assistant's validation runs with ./dev.sh test-ha"
)

#: Every kind of meter the gateway discovers: built-in maps (three-phase, single-phase, one
#: with optional phases, one with optional export), a user map, SunSpec (discovered at the
#: first read), a P1 meter with gas and water behind it, D0 and SML.
SITE = """\
gateway: {id: site.42}
buses:
  plant: {type: modbus-tcp, host: 127.0.0.1}
  rs485: {type: modbus-rtu, port: /dev/ttyUSB0}
  p1: {type: dsmr-p1, port: /dev/ttyUSB1, dsmr_version: 5}
  head: {type: iec62056-21, port: /dev/ttyUSB2}
  ir: {type: sml, port: /dev/ttyUSB3}
meters:
  - {id: incomer, bus: plant, unit: 1, model: sdm630}
  - {id: em24, bus: plant, unit: 2, model: em24}
  - {id: chint, bus: rs485, unit: 3, model: dtsu666}
  - {id: abb, bus: rs485, unit: 4, model: abb_b2x}
  - {id: socket, bus: rs485, unit: 5, model: sdm120}
  - {id: pv, bus: plant, unit: 126, model: sunspec}
  - id: pump
    bus: rs485
    unit: 7
    register_map:
      registers:
        - {channel: power_active, address: 10, table: holding, type: s32}
        - {channel: energy_active_import, address: 12, table: holding, type: u32, unit: Wh}
  - {id: smart, bus: p1}
  - {id: gas, bus: p1, mbus_channel: 1}
  - {id: water, bus: p1, mbus_channel: 2, medium: water}
  - {id: d0, bus: head}
  - {id: ehz, bus: ir}
"""


def validate(messages: dict[str, str]) -> tuple[str, dict[str, str | None]]:
    """(HA release, topic -> problem) from Home Assistant's own discovery validation."""
    done = subprocess.run(
        [HA_PYTHON, str(VALIDATOR), "homeassistant"],
        input=json.dumps(messages),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer["release"], answer["results"]


async def published_by_a_gateway(broker: MosquittoBroker, **mqtt: Any) -> dict[str, str]:
    config = parse_config(SITE, "site.yaml", {})
    health = Health()
    for meter in config.meters:
        health.meter(meter.id).state = MeterState.OK
    inventory = Inventory(
        config.gateway.id,
        meters=describe_meters(config.meters, config.buses),
        uplinks=("wattics", "enerkey", "pts"),
    )
    monitor = Monitor(
        mqtt_config(broker, homeassistant_discovery=True, **mqtt),
        gateway_id=config.gateway.id,
        health=health,
        version="1.2.3",
        publish_interval_secs=0.2,
        reconnect_min_secs=0.05,
        reconnect_max_secs=0.2,
        inventory=inventory,
    )
    async with running(monitor), Subscriber(broker) as operator:
        for topic, payload in monitor.discovery.items():
            await operator.until(topic, payload)
    retained = await retained_under(broker, "homeassistant/#")
    assert retained == monitor.discovery
    return retained


@pytest.mark.timeout(180)
async def test_every_payload_we_publish_is_valid_for_the_oldest_supported_release(
    mosquitto: MosquittoBroker,
) -> None:
    messages = await published_by_a_gateway(mosquitto)
    assert len(messages) > 150  # 12 meters (188 today): sensors, diagnostics; gateway; uplinks
    release, results = validate(messages)
    assert release == "2023.8.0"
    problems = {topic: why for topic, why in results.items() if why is not None}
    assert problems == {}
    assert set(results) == set(messages)


@pytest.mark.timeout(180)
async def test_the_same_release_refuses_model_id_so_the_check_can_fail(
    mosquitto: MosquittoBroker,
) -> None:
    """A gateway told every HA is 2024.9 or later sends device.model_id: HA 2023.8 refuses
    those payloads with the error installers saw (issue 15, item 13)."""
    messages = await published_by_a_gateway(mosquitto, homeassistant_min_version="2024.9")
    _, results = validate(messages)
    with_model_id = {
        topic for topic, text in messages.items() if "model_id" in json.loads(text)["device"]
    }
    assert with_model_id
    refused = {topic for topic, why in results.items() if why and "model_id" in why}
    assert refused == with_model_id
    assert all(
        "extra keys not allowed @ data['device']['model_id']" in (results[t] or "")
        for t in with_model_id
    )
