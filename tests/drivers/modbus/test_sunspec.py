"""SunSpec discovery and reads against simulated SunSpec devices over real loopback Modbus TCP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from drivers.base import MeterReadError
from drivers.modbus.reader import ModbusReader
from drivers.modbus.register_map import RegisterMap, load_builtin
from drivers.modbus.sunspec import (
    INVERTER_INT,
    METER_INT,
    ModelInstance,
    ReadHolding,
    SunSpecError,
    decode_string,
    discover_sunspec,
    encode_string,
    register_map_for,
)
from drivers.modbus.transports import ModbusTcpBus
from drivers.simulator import SUNSPEC_IDENTITY, sunspec_meter
from tests.fakes.modbus_device import SimulatedMeter, serve_modbus_tcp

UNIT = 3


@asynccontextmanager
async def holding_reader(meter: SimulatedMeter, timeout: float = 2.0) -> AsyncIterator[ReadHolding]:
    """`read_holding` of the meter, through a real TCP bus to a real server."""
    async with (
        serve_modbus_tcp([meter]) as server,
        ModbusTcpBus("pv", "127.0.0.1", server.port, timeout_secs=timeout) as bus,
    ):

        async def read_holding(address: int, count: int) -> list[int]:
            return await bus.read_registers(UNIT, "holding", address, count)

        yield read_holding


@asynccontextmanager
async def discovering_reader(meter: SimulatedMeter) -> AsyncIterator[ModbusReader]:
    """The production reader for `model: sunspec`: no map, discovery at the first read."""
    async with (
        serve_modbus_tcp([meter]) as server,
        ModbusTcpBus("pv", "127.0.0.1", server.port, timeout_secs=2) as bus,
    ):
        yield ModbusReader("pv", bus, UNIT, None, timeout_secs=2, discover=discover_sunspec)


def raw_holding_device(words: dict[int, list[int]]) -> SimulatedMeter:
    """A device holding just `words` (for chains discovery must refuse)."""
    first = min(words)
    stub = RegisterMap.model_validate(
        {
            "model": "raw",
            "registers": [
                {"channel": "frequency", "address": first, "table": "holding", "type": "u16"}
            ],
        }
    )
    meter = SimulatedMeter(stub, unit_id=UNIT)
    for address, raw in words.items():
        meter.set_words("holding", address, raw)
    return meter


@pytest.mark.parametrize("base", [40000, 0, 50000])
async def test_the_marker_is_found_at_each_standard_base(base: int) -> None:
    meter = sunspec_meter([103], unit_id=UNIT, base=base)
    async with holding_reader(meter) as read_holding:
        register_map = await discover_sunspec(read_holding)
    inverter_id_at = base + 2 + 2 + 65  # marker, common model header, 65 common registers
    expected = register_map_for(ModelInstance(103, inverter_id_at, 50))
    assert register_map.registers == expected.registers
    assert register_map.register("current").address == inverter_id_at + 2
    assert register_map.model == "sunspec"
    for text in ("Simulated", "SunSpec device", SUNSPEC_IDENTITY["serial"]):
        assert text in register_map.description


async def test_the_chain_is_walked_past_models_we_do_not_read() -> None:
    meter = sunspec_meter([(160, 48), (64120, 3), 203], unit_id=UNIT)
    async with holding_reader(meter) as read_holding:
        register_map = await discover_sunspec(read_holding)
    meter_id_at = 40002 + 2 + 65 + (2 + 48) + (2 + 3)
    assert (
        register_map.registers == register_map_for(ModelInstance(203, meter_id_at, 105)).registers
    )
    assert "203@" in register_map.description and "160@" in register_map.description


async def test_the_first_usable_model_wins_unless_one_is_asked_for() -> None:
    meter = sunspec_meter([103, 203], unit_id=UNIT, mapped={103})
    async with holding_reader(meter) as read_holding:
        first = await discover_sunspec(read_holding)
        asked = await discover_sunspec(read_holding, model_ids={203})
    assert first.register("energy_active_export").address == 40071 + INVERTER_INT.points[-1].offset
    assert "energy_active_import" not in first.channels()
    assert asked.register("energy_active_import").address == 40071 + 52 + 44
    assert "energy_active_import" in asked.channels()


async def test_a_chain_without_end_marker_ends_where_the_registers_do() -> None:
    meter = sunspec_meter([203], unit_id=UNIT, end_marker=False)
    async with holding_reader(meter) as read_holding:
        register_map = await discover_sunspec(read_holding)
    assert register_map.register("current").address == 40071


async def test_a_device_without_marker_is_not_sunspec() -> None:
    meter = raw_holding_device({100: [0x1234, 0x5678]})
    async with holding_reader(meter) as read_holding:
        with pytest.raises(SunSpecError, match="no SunS marker at 40000, 0, 50000") as caught:
            await discover_sunspec(read_holding)
    assert caught.value.kind == "garbage"


async def test_a_chain_of_models_we_cannot_read_is_refused_with_what_was_found() -> None:
    meter = raw_holding_device({0: [0x5375, 0x6E53, 1, 0, 160, 0, 103, 20, *[0] * 20, 0xFFFF, 0]})
    async with holding_reader(meter) as read_holding:
        with pytest.raises(SunSpecError) as caught:
            await discover_sunspec(read_holding)
    message = str(caught.value)
    assert "found 1, 160, 103" in message
    assert "103 (length 20 < 50)" in message


async def test_a_chain_that_never_ends_is_refused() -> None:
    meter = raw_holding_device({0: [0x5375, 0x6E53, 1, 0xFFFB]})  # next header past 0xFFFF
    async with holding_reader(meter) as read_holding:
        with pytest.raises(SunSpecError, match="does not end"):
            await discover_sunspec(read_holding)


async def test_a_silent_device_is_a_timeout_not_a_verdict() -> None:
    meter = sunspec_meter([103], unit_id=UNIT)
    meter.unresponsive = True
    async with holding_reader(meter, timeout=0.2) as read_holding:
        with pytest.raises(MeterReadError) as caught:
            await discover_sunspec(read_holding)
    assert not isinstance(caught.value, SunSpecError)
    assert caught.value.kind in {"timeout", "connection"}


def test_strings_are_two_ascii_bytes_per_register_nul_padded() -> None:
    assert encode_string("SMA", 3) == [0x534D, 0x4100, 0x0000]
    assert decode_string([0x534D, 0x4100, 0x0000]) == "SMA"
    assert decode_string(encode_string("Fronius", 16)) == "Fronius"


def test_the_static_map_is_what_discovery_builds_for_the_usual_inverter_layout() -> None:
    built = register_map_for(ModelInstance(103, 40069, 50))
    assert load_builtin("sunspec").registers == built.registers


THREE_PHASE_METER = {
    "current": 30.3,
    "current_l1": 10.1,
    "current_l2": 10.2,
    "current_l3": 10.0,
    "voltage_l1": 230.1,
    "voltage_l2": 229.9,
    "voltage_l3": 231.0,
    "voltage_l1_l2": 399.1,
    "voltage_l2_l3": 398.7,
    "voltage_l3_l1": 400.2,
    "frequency": 49.98,
    "power_active": -6900.0,
    "power_active_l1": -2300.0,
    "power_active_l2": -2310.0,
    "power_active_l3": -2290.0,
    "power_apparent": 7000.0,
    "power_reactive": 120.0,
    "power_factor": -0.98,
    "power_factor_l1": -0.97,
    "energy_active_import": 12_345_600.0,
    "energy_active_export": 2_100.0,
    "energy_active_import_l1": 4_115_200.0,
}


async def test_a_discovered_meter_reads_with_its_scale_factors_applied() -> None:
    meter = sunspec_meter([203], unit_id=UNIT)
    meter.set_values(THREE_PHASE_METER)
    async with discovering_reader(meter) as reader:
        values = await reader.read()
        again = await reader.read()
    for channel, value in THREE_PHASE_METER.items():
        assert values[channel] == pytest.approx(value, rel=1e-12), channel
    assert again == values
    assert reader.register_map is not None and "203@" in reader.register_map.description
    # the scale factors went over the wire: voltages need 10**-1, frequency 10**-2
    exponents = {ref.address: e for ref, e in meter.exponents.items()}
    data = 40071
    assert exponents[data + METER_INT.scale_factors["V_SF"]] == -1
    assert exponents[data + METER_INT.scale_factors["Hz_SF"]] == -2


async def test_a_single_phase_device_loses_the_phases_it_does_not_have() -> None:
    meter = sunspec_meter([101], unit_id=UNIT)
    present = {"current": 12.5, "current_l1": 12.5, "voltage_l1": 230.0, "power_active": 2875.0}
    present |= {"frequency": 50.01, "energy_active_export": 8_000_000.0}
    meter.set_values(present)
    meter.set_unavailable("current_l2", "current_l3", "voltage_l2", "voltage_l3")
    meter.set_unavailable("voltage_l1_l2", "voltage_l2_l3", "voltage_l3_l1")
    meter.set_unavailable("power_apparent", "power_reactive", "power_factor")
    async with discovering_reader(meter) as reader:
        values = await reader.read()
    assert values == pytest.approx(present)


async def test_an_unimplemented_scale_factor_drops_only_optional_values() -> None:
    meter = sunspec_meter([203], unit_id=UNIT)
    meter.set_values(THREE_PHASE_METER)
    va_sf = 40071 + METER_INT.scale_factors["VA_SF"]
    meter.set_words("holding", va_sf, [0x8000])
    async with discovering_reader(meter) as reader:
        values = await reader.read()
    assert "power_apparent" not in values
    assert values["power_active"] == THREE_PHASE_METER["power_active"]


@pytest.mark.parametrize(
    ("scale_factor", "why"), [("W_SF", "not implemented"), ("TotWh_SF", "outside -10..10")]
)
async def test_a_broken_scale_factor_of_a_required_value_fails_the_read(
    scale_factor: str, why: str
) -> None:
    meter = sunspec_meter([203], unit_id=UNIT)
    meter.set_values(THREE_PHASE_METER)
    word = 0x8000 if why == "not implemented" else 11
    meter.set_words("holding", 40071 + METER_INT.scale_factors[scale_factor], [word])
    async with discovering_reader(meter) as reader:
        with pytest.raises(MeterReadError, match=why) as caught:
            await reader.read()
    assert caught.value.kind == "garbage"


async def test_a_float_inverter_needs_no_scale_factors() -> None:
    # 111: single phase, so phases B and C may be unimplemented (mandatory in 113)
    meter = sunspec_meter([111], unit_id=UNIT)
    values_set = {"current": 30.5, "current_l1": 10.25, "voltage_l1": 230.5, "power_active": 7000.0}
    values_set |= {"frequency": 50.0, "energy_active_export": 123_456.0, "power_factor": 0.5}
    meter.set_values(values_set)
    for channel in ("current_l2", "current_l3", "voltage_l2", "voltage_l3", "power_apparent"):
        meter.set_unavailable(channel)  # NaN: left out
    meter.set_unavailable("voltage_l1_l2", "voltage_l2_l3", "voltage_l3_l1", "power_reactive")
    async with discovering_reader(meter) as reader:
        values = await reader.read()
    assert values == values_set
    assert reader.register_map is not None
    assert not reader.register_map.scale_registers()


def test_every_value_of_a_scale_group_shares_one_exponent() -> None:
    """The simulator picks the one exponent at which all of a group are exact."""
    meter = sunspec_meter([203], unit_id=UNIT)
    meter.set_values({"current_l1": 10.25, "current_l2": 3.5})
    a_sf = 40071 + METER_INT.scale_factors["A_SF"]
    (exponent,) = [e for r, e in meter.exponents.items() if r.address == a_sf]
    assert exponent == -2
    assert meter.words("holding", 40072, 2) == [1025, 350]
    assert meter.words("holding", a_sf, 1) == [0xFFFE]
