"""The simulated meter: strict about channels, and plausible when the demo moves it."""

from __future__ import annotations

import pytest

from drivers.base import MeterReadError
from drivers.modbus.bus import ModbusExceptionError
from drivers.modbus.reader import ModbusReader
from drivers.modbus.register_map import load_builtin
from drivers.modbus.transports import ModbusTcpBus
from tests.fakes.modbus_device import SimulatedMeter, SimulatorServer, serve_modbus_tcp

#: Modbus exception 0x0B: what a TCP gateway answers for a unit that is not behind it.
GATEWAY_NO_RESPONSE = 11

SDM630 = load_builtin("sdm630")
START = 1_700_000_000.0  # any instant; the demo derives the time of day from it


def test_unknown_channels_are_refused() -> None:
    with pytest.raises(KeyError):
        SimulatedMeter(SDM630).set_values({"temperature": 21.0})


def test_demo_values_look_like_a_three_phase_site() -> None:
    meter = SimulatedMeter(SDM630, unit_id=3)
    previous: dict[str, float] = {}
    for step in range(48):  # a day in half hours
        meter.tick(START + step * 1800)
        values = meter.values
        assert set(values) == set(SDM630.channels())
        for phase in ("l1", "l2", "l3"):
            assert 220 < values[f"voltage_{phase}"] < 240
            assert -1 <= values[f"power_factor_{phase}"] <= 1
        assert 49.9 < values["frequency"] < 50.1
        for channel, value in values.items():
            if channel.startswith("energy_") and previous:
                assert value >= previous[channel], f"{channel} went down"
        previous = values


def test_demo_energy_grows_by_power_times_time() -> None:
    meter = SimulatedMeter(SDM630)
    meter.tick(START)
    before = meter.values
    meter.tick(START + 900)
    after = meter.values
    power = after["power_active"]
    imported = after["energy_active_import"] - before["energy_active_import"]
    exported = after["energy_active_export"] - before["energy_active_export"]
    assert imported == pytest.approx(max(power, 0) * 900 / 3600, abs=1e-6)
    assert exported == pytest.approx(max(-power, 0) * 900 / 3600, abs=1e-6)


async def test_demo_values_read_back_through_modbus_within_float32() -> None:
    meter = SimulatedMeter(SDM630)
    meter.tick(START)
    async with (
        serve_modbus_tcp([meter]) as server,
        ModbusTcpBus("demo", "127.0.0.1", server.port, timeout_secs=1) as bus,
    ):
        values = await ModbusReader("demo", bus, 1, SDM630).read()
    assert values.keys() == meter.values.keys()
    for channel, value in values.items():
        assert value == pytest.approx(meter.values[channel], rel=1e-6, abs=1e-6), channel


async def test_only_the_simulated_units_answer_like_behind_a_tcp_gateway() -> None:
    """A unit nobody simulates answers what an RS-485-to-TCP gateway answers for an empty
    address, exception 0x0B "gateway target device failed to respond" (pymodbus' own
    simulator answered exception 4 for every unit id, so `scan` listed ghosts 3-5)."""
    meters = [SimulatedMeter(SDM630, unit_id=1), SimulatedMeter(SDM630, unit_id=2)]
    async with (
        serve_modbus_tcp(meters) as server,
        ModbusTcpBus("demo", "127.0.0.1", server.port, timeout_secs=1) as bus,
    ):
        assert len(await bus.read_registers(2, "input", 0, 2, timeout=1)) == 2
        for unit in (3, 5, 247):
            with pytest.raises(ModbusExceptionError) as refused:
                await bus.read_registers(unit, "input", 0, 2, timeout=1)
            assert refused.value.code == GATEWAY_NO_RESPONSE
    assert sum(m.requests_seen for m in meters) == 1


async def test_absent_units_can_be_silent_like_an_rs485_line() -> None:
    meters = [SimulatedMeter(SDM630, unit_id=1)]
    server = SimulatorServer(meters, absent_units="silent")
    await server.start()
    try:
        async with ModbusTcpBus("demo", "127.0.0.1", server.port, timeout_secs=0.3) as bus:
            with pytest.raises(MeterReadError) as silent:
                await bus.read_registers(4, "input", 0, 2, timeout=0.3)
            assert silent.value.kind == "timeout"
            assert len(await bus.read_registers(1, "input", 0, 2, timeout=1)) == 2
    finally:
        await server.stop()
