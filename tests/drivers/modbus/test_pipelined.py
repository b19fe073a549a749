"""Modbus TCP pipelining (`max_in_flight` > 1, issue 19 #3): several meters behind one
endpoint read at once on ONE connection, every answer matched to its request by transaction
id (the queueing gateway fake answers out of order), the same values as the pymodbus path,
errors named as on every bus."""

from __future__ import annotations

import asyncio

import pytest

from drivers.base import MeterReadError
from drivers.modbus.builders import tcp_bus
from drivers.modbus.bus import ModbusExceptionError
from drivers.modbus.config import ModbusTcpBusConfig
from drivers.modbus.pipelined import PipelinedTcpBus
from drivers.modbus.reader import ModbusReader
from drivers.modbus.register_map import load_builtin
from drivers.modbus.transports import ModbusTcpBus
from drivers.simulator import SimulatedMeter, SimulatorServer
from tests.fakes.modbus_queueing import QueueingGateway

pytestmark = pytest.mark.timeout(20)


def meters(count: int) -> list[SimulatedMeter]:
    sdm630 = load_builtin("sdm630")
    found = []
    for unit in range(1, count + 1):
        meter = SimulatedMeter(sdm630, unit_id=unit)
        meter.set_values({"power_active": 1000.0 * unit, "voltage_l1": 200.0 + unit})
        found.append(meter)
    return found


async def test_concurrent_reads_on_one_connection_get_their_own_units_values() -> None:
    """Eight SDM630s behind one queueing gateway, read all at once with four in flight: each
    reader gets its own unit's values although answers come back out of order, over a
    single connection with four transactions outstanding."""
    async with QueueingGateway(meters(8)) as gateway:
        config = ModbusTcpBusConfig(
            type="modbus-tcp", host="127.0.0.1", port=gateway.port, max_in_flight=4
        )
        bus = tcp_bus("gw", config)
        assert isinstance(bus, PipelinedTcpBus)
        async with bus:
            readers = [ModbusReader(f"m{u}", bus, u, load_builtin("sdm630")) for u in range(1, 9)]
            for _ in range(3):
                results = await asyncio.gather(*(reader.read() for reader in readers))
                for unit, values in enumerate(results, start=1):
                    assert values["power_active"] == 1000.0 * unit
                    assert values["voltage_l1"] == pytest.approx(200.0 + unit)
        assert gateway.connections == 1
        assert gateway.max_outstanding == 4
        assert bus.health.transactions == 3 * len(readers) * len(readers[0].plan)


async def test_the_values_equal_those_read_one_transaction_at_a_time() -> None:
    server = SimulatorServer(meters(2))
    await server.start()
    try:
        sdm630 = load_builtin("sdm630")
        async with (
            ModbusTcpBus("plain", "127.0.0.1", server.port) as plain,
            PipelinedTcpBus("piped", "127.0.0.1", server.port, max_in_flight=2) as piped,
        ):
            for unit in (1, 2):
                expected = await ModbusReader("a", plain, unit, sdm630).read()
                assert await ModbusReader("b", piped, unit, sdm630).read() == expected
    finally:
        await server.stop()


async def test_an_exception_answer_and_a_dead_endpoint_are_named() -> None:
    """A unit the gateway cannot reach answers exception 11; a closed endpoint is a
    `connection` error, counted like on any bus."""
    async with (
        QueueingGateway(meters(1)) as gateway,
        PipelinedTcpBus("gw", "127.0.0.1", gateway.port, max_in_flight=2) as bus,
    ):
        with pytest.raises(ModbusExceptionError) as caught:
            await bus.read_registers(9, "input", 0, 2)
        assert caught.value.kind == "exception" and caught.value.code == 11
        assert await bus.read_registers(1, "input", 0, 2)
        port = gateway.port
        await gateway.stop()
        with pytest.raises(MeterReadError) as lost:
            await bus.read_registers(1, "input", 0, 2, timeout=0.5)
        assert lost.value.kind in {"connection", "timeout"}
    async with PipelinedTcpBus("gone", "127.0.0.1", port, max_in_flight=2) as gone:
        with pytest.raises(MeterReadError) as refused:
            await gone.read_registers(1, "input", 0, 2)
        assert refused.value.kind == "connection"
        assert gone.health.errors["connection"] == 1
