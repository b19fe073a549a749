"""Modbus RTU over a socat pseudo-terminal pair, pymodbus' serial server on the far end."""

from __future__ import annotations

import time

import pytest

from drivers.base import MeterReadError
from drivers.modbus.reader import ModbusReader
from drivers.modbus.register_map import load_builtin
from drivers.modbus.transports import ModbusRtuBus
from tests.fakes.modbus_device import SimulatedMeter, SimulatorServer
from tests.fixtures.modbus import SDM630_VALUES

SDM630 = load_builtin("sdm630")


async def test_two_meters_on_one_line_one_of_them_silent(serial_pair: tuple[str, str]) -> None:
    device_end, gateway_end = serial_pair
    alive, silent = SimulatedMeter(SDM630, unit_id=1), SimulatedMeter(SDM630, unit_id=2)
    alive.set_values(SDM630_VALUES)
    silent.unresponsive = True
    server = SimulatorServer([alive, silent], serial_port=device_end, baudrate=115200)
    await server.start()
    try:
        async with ModbusRtuBus("rs485", gateway_end, baudrate=115200, timeout_secs=0.5) as bus:
            good = ModbusReader("incomer", bus, 1, SDM630)
            dead = ModbusReader("heatpump", bus, 2, SDM630, timeout_secs=0.3)
            assert await good.read() == SDM630_VALUES
            start = time.monotonic()
            with pytest.raises(MeterReadError) as caught:
                await dead.read()
            assert caught.value.kind == "timeout"
            assert time.monotonic() - start < 0.6
            assert await good.read() == SDM630_VALUES
    finally:
        await server.stop()
    assert alive.requests_served == 6


async def test_the_line_is_paced_to_its_baud_rate(serial_pair: tuple[str, str]) -> None:
    """Issue 19 #5: a pty (like a buffering USB adapter) takes bytes at once, but at 1200
    baud a 10-register read needs (8 + 25) characters x 10 bits = 0.275 s on the wire: a
    0.1 s timeout counts from then (no answer is cut off while still arriving), and the next
    request waits for the line, so the following read of another unit is answered whole."""
    device_end, gateway_end = serial_pair
    alive, silent = SimulatedMeter(SDM630, unit_id=1), SimulatedMeter(SDM630, unit_id=2)
    alive.set_values(SDM630_VALUES)
    silent.unresponsive = True
    server = SimulatorServer([alive, silent], serial_port=device_end, baudrate=1200)
    await server.start()
    try:
        async with ModbusRtuBus("rs485", gateway_end, baudrate=1200, timeout_secs=0.1) as bus:
            with pytest.raises(MeterReadError) as caught:
                await bus.read_registers(2, "input", 0, 10)
            assert caught.value.kind == "timeout"
            assert "no answer within 0.375 s" in str(caught.value)
            assert len(await bus.read_registers(1, "input", 0, 10)) == 10
    finally:
        await server.stop()
