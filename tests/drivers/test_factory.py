"""open_readers: config in, one reader per meter, one bus per used line, nothing touched early."""

from __future__ import annotations

import time
from typing import Any

import pytest

from drivers.base import MeterReadError
from drivers.factory import open_readers
from drivers.modbus.reader import ModbusReader
from drivers.modbus.register_map import load_builtin
from drivers.modbus.transports import ModbusRtuBus, ModbusTcpBus
from gateway.config.schema import Config
from tests.fakes.modbus_device import SimulatedMeter, serve_modbus_tcp
from tests.fixtures.modbus import SDM630_VALUES
from tests.fixtures.network import free_port


def make_config(port: int, **meter_options: Any) -> Config:
    return Config.model_validate(
        {
            "gateway": {"id": "site-1"},
            "buses": {
                "plant": {"type": "modbus-tcp", "host": "127.0.0.1", "port": port},
                "rs485": {"type": "modbus-rtu", "port": "/dev/does-not-exist"},
                "spare": {"type": "modbus-tcp", "host": "192.0.2.1"},
            },
            "meters": [
                {"id": "incomer", "bus": "plant", "unit": 1, "model": "sdm630", **meter_options},
                {"id": "pv", "bus": "plant", "unit": 2, "model": "sdm630"},
                {"id": "heatpump", "bus": "rs485", "unit": 5, "model": "sdm630"},
            ],
        }
    )


async def test_readers_per_meter_sharing_one_bus_per_line(
    sdm630_server: tuple[int, SimulatedMeter],
) -> None:
    port, _ = sdm630_server
    async with open_readers(make_config(port)) as readers:
        assert sorted(readers) == ["heatpump", "incomer", "pv"]
        incomer, pv, heatpump = readers["incomer"], readers["pv"], readers["heatpump"]
        assert isinstance(incomer, ModbusReader) and isinstance(pv, ModbusReader)
        assert isinstance(heatpump, ModbusReader)
        assert incomer.bus is pv.bus and isinstance(incomer.bus, ModbusTcpBus)
        assert isinstance(heatpump.bus, ModbusRtuBus) and heatpump.bus.port == "/dev/does-not-exist"
        assert (incomer.meter_id, incomer.unit) == ("incomer", 1)
        assert await incomer.read() == SDM630_VALUES
    with pytest.raises(MeterReadError, match="closed"):
        await incomer.read()  # every bus is closed on exit


async def test_opening_touches_no_hardware() -> None:
    port = free_port()  # nothing listens here, and the serial port does not exist
    async with open_readers(make_config(port)) as readers:
        with pytest.raises(MeterReadError) as caught:
            await readers["incomer"].read()
        assert caught.value.kind == "connection"
        with pytest.raises(MeterReadError) as caught:
            await readers["heatpump"].read()
        assert caught.value.kind == "connection"


async def test_a_meter_timeout_overrides_its_bus_timeout() -> None:
    silent = SimulatedMeter(load_builtin("sdm630"), unit_id=1)
    silent.unresponsive = True
    async with serve_modbus_tcp([silent]) as server:
        config = make_config(server.port, timeout_secs=0.3)
        async with open_readers(config) as readers:
            start = time.monotonic()
            with pytest.raises(MeterReadError) as caught:
                await readers["incomer"].read()
            elapsed = time.monotonic() - start
            reader = readers["pv"]
            assert isinstance(reader, ModbusReader)
            assert reader.timeout_secs == 3.0  # the bus default where the meter sets none
    assert caught.value.kind == "timeout"
    assert 0.3 <= elapsed < 0.6
