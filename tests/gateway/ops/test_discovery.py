"""Home Assistant discovery payloads, field by field: what HA needs to build devices and sensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from drivers.config import MeterConfig
from gateway.ops.discovery import (
    MAIN_CHANNELS,
    Inventory,
    MeterDescription,
    describe_meters,
    discovery_messages,
    node_id,
)

BASE = "mg/site-42"
SDM630_CHANNELS = frozenset(
    {
        "voltage_l1",
        "voltage_l2",
        "voltage_l3",
        "current_l1",
        "current_l2",
        "current_l3",
        "power_active",
        "power_active_l1",
        "power_factor",
        "frequency",
        "energy_active_import",
        "energy_active_export",
        "energy_reactive_import",  # not a main channel: no sensor
        "voltage_l1_l2",  # nor this
    }
)


def render(**inventory: Any) -> dict[str, dict[str, Any]]:
    fields: dict[str, Any] = {
        "gateway_id": "site-42",
        "meters": (
            MeterDescription(
                "incomer",
                SDM630_CHANNELS,
                model_id="sdm630",
                model="Eastron SDM630 three-phase energy meter",
                manufacturer="Eastron",
            ),
        ),
        "uplinks": ("wattics",),
    }
    return discovery_messages(
        Inventory(**(fields | inventory)),
        base_topic=BASE,
        discovery_prefix="homeassistant",
        version="1.2.3",
    )


def config_topic(object_id: str) -> str:
    return f"homeassistant/sensor/meter-gateway_site-42/{object_id}/config"


GATEWAY_STATUS = {
    "topic": f"{BASE}/status",
    "payload_available": "online",
    "payload_not_available": "offline",
}
METER_DEVICE = {
    "identifiers": ["meter-gateway_site-42_incomer"],
    "name": "incomer",
    "model": "Eastron SDM630 three-phase energy meter",
    "manufacturer": "Eastron",
    "via_device": "meter-gateway_site-42",
}
GATEWAY_DEVICE = {
    "identifiers": ["meter-gateway_site-42"],
    "name": "meter-gateway site-42",
    "manufacturer": "meter-gateway",
    "model": "meter-gateway",
    "sw_version": "1.2.3",
}


def test_energy_sensor_is_what_the_energy_dashboard_accepts() -> None:
    payload = render()[config_topic("meter_incomer_energy_active_import")]
    assert payload == {
        "name": "Energy import",
        "unique_id": "meter-gateway_site-42_meter_incomer_energy_active_import",
        "state_topic": f"{BASE}/meters/incomer/state",
        "value_template": (
            "{% set v = value_json['values'].get('energy_active_import') %}"
            "{{ (v / 1000) if v is number else None }}"
        ),
        "device_class": "energy",
        "unit_of_measurement": "kWh",
        "state_class": "total_increasing",
        "suggested_display_precision": 3,
        "availability": [
            GATEWAY_STATUS,
            {
                "topic": f"{BASE}/meters/incomer/state",
                "value_template": (
                    "{{ 'online' if value_json.state in ['ok', 'degraded'] else 'offline' }}"
                ),
            },
        ],
        "availability_mode": "all",
        "device": METER_DEVICE,
    }


@pytest.mark.parametrize(
    ("channel", "device_class", "unit", "state_class"),
    [
        ("power_active", "power", "W", "measurement"),
        ("power_active_l1", "power", "W", "measurement"),
        ("voltage_l2", "voltage", "V", "measurement"),
        ("current_l3", "current", "A", "measurement"),
        ("frequency", "frequency", "Hz", "measurement"),
        ("power_factor", "power_factor", None, "measurement"),  # a ratio: HA wants no unit
        ("energy_active_export", "energy", "kWh", "total_increasing"),
    ],
)
def test_each_main_channel_has_its_device_class_unit_and_state_class(
    channel: str, device_class: str, unit: str | None, state_class: str
) -> None:
    payload = render()[config_topic(f"meter_incomer_{channel}")]
    assert payload["device_class"] == device_class
    assert payload.get("unit_of_measurement") == unit
    assert payload["state_class"] == state_class
    assert payload["state_topic"] == f"{BASE}/meters/incomer/state"
    assert payload["device"] == METER_DEVICE
    assert "entity_category" not in payload  # measurements are primary entities


def test_reactive_and_apparent_power_classes() -> None:
    meter = MeterDescription("m", frozenset({"power_reactive", "power_apparent", "current"}))
    rendered = render(meters=(meter,))
    reactive = rendered[config_topic("meter_m_power_reactive")]
    apparent = rendered[config_topic("meter_m_power_apparent")]
    current = rendered[config_topic("meter_m_current")]
    assert (reactive["device_class"], reactive["unit_of_measurement"]) == ("reactive_power", "var")
    assert (apparent["device_class"], apparent["unit_of_measurement"]) == ("apparent_power", "VA")
    assert (current["device_class"], current["unit_of_measurement"]) == ("current", "A")
    # A device without model facts says only what is known.
    assert reactive["device"] == {
        "identifiers": ["meter-gateway_site-42_m"],
        "name": "m",
        "via_device": "meter-gateway_site-42",
    }


def test_only_main_channels_the_meter_has_become_sensors() -> None:
    rendered = render()
    measured = {
        topic.split("/")[3].removeprefix("meter_incomer_")
        for topic, payload in rendered.items()
        if payload.get("device") == METER_DEVICE and "entity_category" not in payload
    }
    assert measured == SDM630_CHANNELS & set(MAIN_CHANNELS)
    assert "energy_reactive_import" not in measured and "voltage_l1_l2" not in measured


def test_meter_diagnostics_stay_available_while_the_meter_is_offline() -> None:
    rendered = render()
    state = rendered[config_topic("meter_incomer_state")]
    assert state == {
        "name": "State",
        "unique_id": "meter-gateway_site-42_meter_incomer_state",
        "device_class": "enum",  # its `options` list only from HA 2024.9 (older drop it)
        "value_template": "{{ value_json.state }}",
        "state_topic": f"{BASE}/meters/incomer/state",
        "entity_category": "diagnostic",
        "availability_topic": f"{BASE}/status",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": METER_DEVICE,
    }
    errors = rendered[config_topic("meter_incomer_read_errors")]
    assert errors["value_template"] == "{{ value_json.get('errors_total') }}"
    assert errors["state_class"] == "total_increasing"
    latency = rendered[config_topic("meter_incomer_read_latency")]
    assert (latency["device_class"], latency["unit_of_measurement"]) == ("duration", "s")


def test_gateway_device_has_diagnostic_sensors_for_store_and_each_uplink() -> None:
    rendered = render(uplinks=("wattics", "enerkey"))
    gateway = {
        topic: payload for topic, payload in rendered.items() if payload["device"] == GATEWAY_DEVICE
    }
    assert all(p["entity_category"] == "diagnostic" for p in gateway.values())
    assert all(p["availability_topic"] == f"{BASE}/status" for p in gateway.values())
    store = rendered[config_topic("gateway_store_used")]
    assert store["state_topic"] == f"{BASE}/state"
    assert (store["unit_of_measurement"], store["state_class"]) == ("%", "measurement")
    assert store["value_template"] == "{{ value_json.get('store_used_pct') }}"
    for uplink in ("wattics", "enerkey"):
        backlog = rendered[config_topic(f"uplink_{uplink}_backlog")]
        assert backlog["state_topic"] == f"{BASE}/uplinks/{uplink}/state"
        assert backlog["value_template"] == "{{ value_json.get('backlog_rows') }}"
        assert backlog["name"] == f"{uplink.capitalize()} backlog"
        age = rendered[config_topic(f"uplink_{uplink}_oldest_undelivered_age")]
        assert (age["device_class"], age["unit_of_measurement"]) == ("duration", "s")
        dead = rendered[config_topic(f"uplink_{uplink}_dead_letters")]
        assert dead["value_template"] == "{{ value_json.get('dead_letters') }}"


def test_unique_ids_are_unique_and_carry_the_gateway_id() -> None:
    first = render()
    second = render(gateway_id="site-43")
    ids = [p["unique_id"] for p in first.values()] + [p["unique_id"] for p in second.values()]
    assert len(ids) == len(set(ids))  # two gateways on one HA never collide
    assert all("site-42" in topic for topic in first)
    json.dumps(first, allow_nan=False)  # every payload is strict JSON


def test_ids_with_dots_become_valid_node_and_object_ids() -> None:
    assert node_id("plant.north") == "meter-gateway_plant_north"
    rendered = render(
        gateway_id="plant.north", meters=(MeterDescription("pv.roof", frozenset({"frequency"})),)
    )
    assert (
        "homeassistant/sensor/meter-gateway_plant_north/meter_pv_roof_frequency/config" in rendered
    )


def test_described_meters_take_channels_and_model_from_the_register_map() -> None:
    described = describe_meters(
        [
            MeterConfig(id="incomer", bus="plant", model="sdm630"),
            MeterConfig(id="odd", bus="plant", model="not-a-built-in-model"),
        ]
    )
    incomer, odd = described
    assert {"voltage_l1", "energy_active_import", "power_factor"} <= incomer.channels
    assert incomer.model_id == "sdm630"
    assert incomer.model is not None and "SDM630" in incomer.model
    assert odd == MeterDescription("odd", frozenset(), model_id="not-a-built-in-model")
    rendered = render(meters=described)
    assert config_topic("meter_odd_state") in rendered  # diagnostics even without channels
    assert not any(t.startswith(config_topic("meter_odd_power")[:-7]) for t in rendered)


def _devices(rendered: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [payload["device"] for payload in rendered.values()]


def test_no_device_key_the_oldest_supported_home_assistant_refuses() -> None:
    """HA before 2024.9 refuses device.model_id ("extra keys not allowed @
    data['device']['model_id']"); by default every supported release must accept every
    payload (docs/mqtt.md lists the releases)."""
    rendered = render()
    assert all("model_id" not in device for device in _devices(rendered))
    incomer = rendered[config_topic("meter_incomer_power_active")]["device"]
    assert incomer["model"] == "Eastron SDM630 three-phase energy meter"


def test_model_id_is_sent_when_the_configured_minimum_release_accepts_it() -> None:
    rendered = discovery_messages(
        Inventory("site-42", meters=(MeterDescription("m", SDM630_CHANNELS, model_id="sdm630"),)),
        base_topic=BASE,
        discovery_prefix="homeassistant",
        version="1.2.3",
        ha_min_version="2024.9",
    )
    payload = rendered[config_topic("meter_m_power_active")]
    assert payload["device"]["model_id"] == "sdm630"
    assert payload["origin"] == {"name": "meter-gateway", "sw_version": "1.2.3"}  # 2023.9 on
    assert "origin" not in render()[config_topic("meter_incomer_power_active")]
    state = rendered[config_topic("meter_m_state")]
    assert state["options"] == ["unknown", "ok", "degraded", "offline"]


def test_a_meter_without_a_model_name_shows_its_model_key_as_the_model() -> None:
    rendered = render(meters=(MeterDescription("m", SDM630_CHANNELS, model_id="sunspec"),))
    assert rendered[config_topic("meter_m_power_active")]["device"]["model"] == "sunspec"


@pytest.mark.parametrize("bad", ["2024", "24.9", "2024.13", "latest", "2024.9.x"])
def test_a_minimum_release_that_is_not_one_is_a_config_error(bad: str) -> None:
    from gateway.config.schema import MqttConfig

    with pytest.raises(ValueError, match="not a Home Assistant release"):
        MqttConfig(host="localhost", homeassistant_min_version=bad)


def test_a_release_written_as_a_number_is_refused_with_a_hint_to_quote_it(
    tmp_path: Path,
) -> None:
    """YAML reads `2024.10` as the number 2024.1: never guess, ask for quotes."""
    from core.config_errors import ConfigError
    from gateway.config.loader import load_config

    path = tmp_path / "config.yaml"
    path.write_text(
        "gateway: {id: s}\nmqtt:\n  host: localhost\n  homeassistant_min_version: 2024.10\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert f"{path}:4: mqtt.homeassistant_min_version: write the release in quotes" in str(
        caught.value
    )
