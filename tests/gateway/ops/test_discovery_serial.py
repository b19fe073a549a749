"""HA discovery of serial utility meters (DSMR P1, SML, D0): sensors from the OBIS map and the
M-Bus medium, so a P1 smart meter feeds HA's energy dashboard (electricity per tariff, gas,
water, heat). Payloads checked field by field, from a config as an installer writes it."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.loader import parse_config
from gateway.ops.discovery import (
    MAIN_CHANNELS,
    Inventory,
    MeterDescription,
    describe_meters,
    discovery_messages,
)

BASE = "mg/home"
SITE = """\
gateway: {id: home}
buses:
  p1: {type: dsmr-p1, port: /dev/ttyUSB0, dsmr_version: 5}
  p1-old: {type: dsmr-p1, port: /dev/ttyUSB1, dsmr_version: 2.2}
  ir: {type: sml, port: /dev/ttyUSB2}
  head: {type: iec62056-21, port: /dev/ttyUSB3}
meters:
  - {id: smart, bus: p1}
  - {id: gas, bus: p1, mbus_channel: 1}
  - {id: water, bus: p1, mbus_channel: 2, medium: water}
  - {id: heat, bus: p1, mbus_channel: 3, medium: heat}
  - {id: old, bus: p1-old}
  - {id: ehz, bus: ir, obis: {"1-0:36.7.0": power_active_l1}}
  - {id: d0, bus: head}
"""

MEASURING = [
    {"topic": f"{BASE}/status", "payload_available": "online", "payload_not_available": "offline"},
]


def described() -> dict[str, MeterDescription]:
    config = parse_config(SITE, "site.yaml", {})
    return {m.id: m for m in describe_meters(config.meters, config.buses)}


def rendered() -> dict[str, dict[str, Any]]:
    return discovery_messages(
        Inventory("home", meters=tuple(described().values())),
        base_topic=BASE,
        discovery_prefix="homeassistant",
        version="1.2.3",
    )


def sensor(meter: str, channel: str) -> dict[str, Any]:
    topic = f"homeassistant/sensor/meter-gateway_home/meter_{meter}_{channel}/config"
    return rendered()[topic]


def availability(meter: str) -> list[dict[str, str]]:
    return [
        *MEASURING,
        {
            "topic": f"{BASE}/meters/{meter}/state",
            "value_template": (
                "{{ 'online' if value_json.state in ['ok', 'degraded'] else 'offline' }}"
            ),
        },
    ]


def test_a_gas_meter_behind_a_p1_meter_is_what_the_energy_dashboards_gas_takes() -> None:
    assert sensor("gas", "gas_volume") == {
        "name": "Gas",
        "unique_id": "meter-gateway_home_meter_gas_gas_volume",
        "state_topic": f"{BASE}/meters/gas/state",
        "value_template": "{{ value_json['values'].get('gas_volume') }}",
        "device_class": "gas",
        "unit_of_measurement": "m³",
        "state_class": "total_increasing",
        "suggested_display_precision": 3,
        "availability": availability("gas"),
        "availability_mode": "all",
        "device": {
            "identifiers": ["meter-gateway_home_gas"],
            "name": "gas",
            "model": "gas meter on M-Bus channel 1",
            "via_device": "meter-gateway_home",
        },
    }


def test_water_and_heat_meters_get_their_own_classes_and_units() -> None:
    water = sensor("water", "water_volume")
    assert (water["name"], water["device_class"], water["unit_of_measurement"]) == (
        "Water",
        "water",
        "m³",
    )
    assert water["state_class"] == "total_increasing"
    assert water["value_template"] == "{{ value_json['values'].get('water_volume') }}"
    heat = sensor("heat", "heat_energy")
    assert (heat["name"], heat["device_class"], heat["unit_of_measurement"]) == (
        "Heat energy",
        "energy",
        "kWh",
    )
    assert heat["state_class"] == "total_increasing"
    assert heat["value_template"] == (  # stored in Wh, offered in kWh like electricity
        "{% set v = value_json['values'].get('heat_energy') %}"
        "{{ (v / 1000) if v is number else None }}"
    )
    meters = described()
    assert meters["water"].channels == {"water_volume"}  # nothing else: no dead sensors
    assert meters["heat"].channels == {"heat_energy"}
    assert not meters["water"].maybe_channels and not meters["heat"].maybe_channels


@pytest.mark.parametrize(
    ("channel", "name"),
    [
        ("energy_active_import_t1", "Energy import tariff 1"),
        ("energy_active_import_t2", "Energy import tariff 2"),
        ("energy_active_export_t1", "Energy export tariff 1"),
        ("energy_active_export_t2", "Energy export tariff 2"),
    ],
)
def test_p1_tariff_registers_are_energy_counters_in_kwh(channel: str, name: str) -> None:
    payload = sensor("smart", channel)
    assert payload["name"] == name
    assert payload["device_class"] == "energy"
    assert payload["unit_of_measurement"] == "kWh"
    assert payload["state_class"] == "total_increasing"
    assert payload["value_template"] == (
        f"{{% set v = value_json['values'].get('{channel}') %}}"
        "{{ (v / 1000) if v is number else None }}"
    )
    assert payload["availability"] == availability("smart")
    assert "enabled_by_default" not in payload  # every DSMR meter sends its tariffs
    assert payload["device"]["model"] == "DSMR 5 P1 meter"


def test_a_p1_meter_offers_what_its_dsmr_version_carries_and_enables_what_every_meter_sends() -> (
    None
):
    smart = described()["smart"]
    assert smart.channels == {
        "energy_active_import",
        "energy_active_export",
        "energy_active_import_t1",
        "energy_active_import_t2",
        "energy_active_export_t1",
        "energy_active_export_t2",
        "power_active",
    }
    # DSMR 5 carries per-phase values; single-phase meters leave L2/L3 out: offered disabled.
    assert {"voltage_l1", "voltage_l3", "current_l2", "power_active_l3"} <= smart.maybe_channels
    assert not {"gas_volume", "frequency", "power_factor"} & smart.maybe_channels
    voltage = sensor("smart", "voltage_l3")
    assert voltage["enabled_by_default"] is False
    assert (voltage["device_class"], voltage["unit_of_measurement"]) == ("voltage", "V")
    # DSMR 2.2 telegrams have no per-phase values at all: no sensor for them.
    old = described()["old"]
    assert old.channels == smart.channels
    assert not {c for c in old.maybe_channels if c in MAIN_CHANNELS}


def test_sml_and_d0_meters_enable_energy_and_power_and_offer_the_rest() -> None:
    meters = described()
    assert meters["d0"].channels == {"energy_active_import", "energy_active_export", "power_active"}
    assert {"voltage_l1", "gas_volume", "energy_active_import_t1"} <= meters["d0"].maybe_channels
    assert meters["d0"].model == "IEC 62056-21 (D0) meter"
    # an `obis:` override is the installer saying the meter sends it: enabled
    assert "power_active_l1" in meters["ehz"].channels
    assert sensor("ehz", "power_active_l1").get("enabled_by_default", True) is True
    assert sensor("ehz", "power_active_l2")["enabled_by_default"] is False
    assert meters["ehz"].model == "SML meter"
