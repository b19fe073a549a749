"""Config of D0, P1 and SML meters: what is valid, what an installer is told when it is not,
and the OBIS map a meter ends up with."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core.config_errors import ConfigError
from drivers.serial.config import DsmrP1BusConfig, Iec62056BusConfig, SmlBusConfig
from drivers.serial.lines import obis_map_for
from drivers.serial.obis_map import (
    ObisMapError,
    Override,
    Quantity,
    config_code,
    default_map,
    parse_map,
)
from gateway.config.loader import parse_config

SITE = """\
gateway: {id: site-1}
buses:
  head: {type: iec62056-21, port: /dev/ttyUSB0, max_baudrate: 4800}
  p1: {type: dsmr-p1, port: /dev/ttyUSB1, dsmr_version: 2.2}
  ir: {type: sml, port: /dev/ttyUSB2}
  plant: {type: modbus-tcp, host: 127.0.0.1}
meters:
  - {id: main, bus: head, address: "12345678"}
  - {id: home, bus: p1}
  - {id: gas, bus: p1, mbus_channel: 1}
  - {id: ehz, bus: ir, obis: {"1.8.0": energy_active_import, "16.7.0": null}}
  - {id: pv, bus: plant, model: sdm630}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "site.yaml", {})
    return [str(p) for p in caught.value.problems]


def test_a_site_with_every_serial_bus_type_is_valid() -> None:
    config = parse_config(SITE, "site.yaml", {})
    head, p1, ir = config.buses["head"], config.buses["p1"], config.buses["ir"]
    assert isinstance(head, Iec62056BusConfig) and (head.baudrate, head.parity, head.bytesize) == (
        300,
        "E",
        7,
    )
    assert isinstance(p1, DsmrP1BusConfig) and p1.dsmr_version == "2.2"
    assert p1.line_settings() == (9600, 7, "E", 1)  # DSMR 2.2 runs 9600 7E1
    assert isinstance(ir, SmlBusConfig) and (ir.baudrate, ir.parity) == (9600, "N")
    assert config.meter("gas").mbus_channel == 1 and config.meter("gas").model is None
    modern = parse_config(SITE.replace("dsmr_version: 2.2", "dsmr_version: 5"), "s.yaml", {})
    p1 = modern.buses["p1"]
    assert isinstance(p1, DsmrP1BusConfig) and p1.line_settings() == (115200, 8, "N", 1)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("{id: main, bus: head,", "{id: main, bus: head, model: sdm630,"),
            ":8: meters[0].model: model applies to Modbus meters only",
        ),
        (
            ("{id: home, bus: p1}", "{id: home, bus: p1, unit: 3}"),
            ":9: meters[1].unit: unit applies to Modbus meters only",
        ),
        (
            ("{id: ehz, bus: ir,", "{id: ehz, bus: ir, mbus_channel: 2,"),
            ":11: meters[3].mbus_channel: mbus_channel applies to dsmr-p1 buses only",
        ),
        (
            ("{id: home, bus: p1}", '{id: home, bus: p1, address: "1"}'),
            ":9: meters[1].address: address applies to iec62056-21 (D0) buses only",
        ),
        (
            ("{id: home, bus: p1}", "{id: home, bus: p1, medium: water}"),
            ":9: meters[1].medium: medium needs mbus_channel",
        ),
        (
            ("{id: home, bus: p1}", "{id: home, bus: p1, mbus_channel: 1}"),
            ":10: meters[2].mbus_channel: M-Bus channel 1 of bus 'p1' is already read by meter "
            "'home'",
        ),
        (
            ('"16.7.0": null', '"16.7": null'),
            ":11: meters[3].obis: '16.7' is not a current-value OBIS code",
        ),
        (
            ('"16.7.0": null', '"1.8.0*12": energy_active_export'),
            ":11: meters[3].obis: '1.8.0*12' is not a current-value OBIS code",
        ),
        (
            ('"16.7.0": null', '"16.7.0": power_activ'),
            ":11: meters[3].obis",
        ),
        (
            ("{id: pv, bus: plant, model: sdm630}", "{id: pv, bus: plant}"),
            ":12: meters[4]: required key 'model' is missing",
        ),
        (
            (
                "{id: pv, bus: plant, model: sdm630}",
                "{id: pv, bus: plant, model: sdm630, obis: {'1.8.0': energy_active_import}}",
            ),
            ":12: meters[4].obis: obis applies to serial meters (D0, P1, SML) only",
        ),
        (("dsmr_version: 2.2", "dsmr_version: 6"), ":4: buses.p1.dsmr_version"),
        (
            ("max_baudrate: 4800", "baudrate: 9600, max_baudrate: 4800"),
            ":3: buses.head: max_baudrate must not be below baudrate",
        ),
    ],
)
def test_misconfigurations_name_file_line_and_key(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in SITE
    found = problems(SITE.replace(old, new))
    assert any(expected in p for p in found), found


def test_a_meters_obis_overrides_replace_or_drop_single_rules() -> None:
    config = parse_config(SITE, "site.yaml", {})
    obis = obis_map_for(config.meter("ehz"))
    reading = {
        "1-0:1.8.0": Quantity(Decimal("100.5"), "kWh"),
        "1-0:1.8.1": Quantity(Decimal("60"), "kWh"),
        "1-0:1.8.2": Quantity(Decimal("40"), "kWh"),
        "1-0:16.7.0": Quantity(Decimal("1.5"), "kW"),
        "1-0:1.7.0": Quantity(Decimal("2"), "kW"),
    }
    values, _ = obis.apply(reading)
    assert values["energy_active_import"] == 100_500.0
    assert values["power_active"] == 2000.0  # 16.7.0 ignored: the next rule (1.7.0) applies
    remapped = default_map().with_overrides({"1-0:1.8.1": Override("energy_active_import", None)})
    assert remapped.apply(reading)[0]["energy_active_import"] == 60_000.0


def test_units_are_converted_and_a_misfit_is_left_out_never_guessed() -> None:
    obis = default_map()
    values, found = obis.apply(
        {
            "1-0:1.8.0": Quantity(Decimal("1.25"), "MWh"),
            "6-0:1.0.0": Quantity(Decimal("3.6"), "GJ"),
            "1-0:32.7.0": Quantity(Decimal("230"), "kW"),  # nonsense unit for a voltage
            "1-0:31.7.0": Quantity(Decimal("5")),  # no unit: a current by its code (A)
            "7-0:3.0.0": Quantity(Decimal("12")),  # no unit, and the code names none
            "1-0:13.7.0": Quantity(Decimal("0.98")),  # power factor: no unit needed
        }
    )
    assert values == {
        "energy_active_import": 1_250_000.0,
        "heat_energy": 1_000_000.0,
        "power_factor": 0.98,
        "current_l1": 5.0,
    }
    assert sorted(found) == [
        "gas_volume from 7-0:3.0.0: no unit given, gas_volume needs m3",
        "voltage_l1 from 1-0:32.7.0: unit kW does not fit voltage_l1 (V)",
    ]
    assumed = obis.with_overrides({"1-0:31.7.0": Override("current_l1", "mA")})
    assert assumed.apply({"1-0:31.7.0": Quantity(Decimal("5"))})[0] == {"current_l1": 0.005}


def test_codes_are_normalised_and_map_files_checked() -> None:
    assert config_code("1.8.0") == config_code("1-0:1.8.0*255") == "1-0:1.8.0"
    assert config_code("0-1:24.2.1") == "0-1:24.2.1"
    with pytest.raises(ObisMapError):
        config_code("1.8.0*01")
    with pytest.raises(ObisMapError, match="unknown channel"):
        parse_map({"power_activ": [["16.7.0"]]}, "x.yaml")
    with pytest.raises(ObisMapError, match="not a current-value OBIS code"):
        parse_map({"power_active": [["16.7"]]}, "x.yaml")
    # the shipped map loads and names only known channels
    assert "energy_active_import" in default_map().rules


def test_the_d0_fallback_setting_reaches_the_line() -> None:
    from drivers.serial.iec62056 import Iec62056Line

    bus = Iec62056BusConfig(type="iec62056-21", port="/dev/ttyUSB0", fast_retry_after=3)
    assert Iec62056Line.from_config("d0", bus).fast_retry_after == 3
    default = Iec62056BusConfig(type="iec62056-21", port="/dev/ttyUSB0")
    assert Iec62056Line.from_config("d0", default).fast_retry_after == 10
