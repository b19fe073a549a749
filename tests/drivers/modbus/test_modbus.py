"""Modbus TCP buses and readers against simulated meters on real loopback servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest
from pymodbus.constants import ExcCodes

from drivers.base import MeterReader, MeterReadError
from drivers.modbus.reader import ModbusReader
from drivers.modbus.register_map import RegisterMap, load_builtin
from drivers.modbus.transports import ModbusTcpBus
from tests.fakes.modbus_device import SimulatedMeter, SimulatorServer, serve_modbus_tcp
from tests.fixtures.modbus import SDM630_VALUES
from tests.fixtures.network import free_port
from tests.helpers.eventually import eventually

SDM630 = load_builtin("sdm630")


def tcp_bus(port: int, **options: float) -> ModbusTcpBus:
    settings = {"timeout_secs": 1.0, "reconnect_max_secs": 0.2, "reconnect_initial_secs": 0.05}
    return ModbusTcpBus("plant", "127.0.0.1", port, **(settings | options))


def small_map(*registers: tuple[str, int], **options: object) -> RegisterMap:
    return RegisterMap.model_validate(
        {
            "model": "small",
            "registers": [
                {"channel": c, "address": a, "table": "input", "type": "f32"} for c, a in registers
            ],
            **options,
        }
    )


async def read_error(read: Awaitable[object]) -> MeterReadError:
    with pytest.raises(MeterReadError) as caught:
        await read
    return caught.value


async def timed(read: Awaitable[dict[str, float]]) -> tuple[float, dict[str, float] | Exception]:
    start = time.monotonic()
    try:
        result: dict[str, float] | Exception = await read
    except MeterReadError as exc:
        result = exc
    return time.monotonic() - start, result


async def test_sdm630_is_read_whole_in_three_transactions(
    sdm630_server: tuple[int, SimulatedMeter],
) -> None:
    port, meter = sdm630_server
    async with tcp_bus(port) as bus:
        reader: MeterReader = ModbusReader("incomer", bus, 1, SDM630)
        values = await reader.read()
    assert values == SDM630_VALUES  # energies in Wh, exactly what the meter holds in kWh
    assert meter.requests_served == 3
    assert meter.served == [("input", 0x0000, 80), ("input", 0x00C8, 26), ("input", 0x0156, 10)]


async def test_one_connection_serves_every_unit_and_reads_do_not_mix() -> None:
    meters = [SimulatedMeter(SDM630, unit_id=unit) for unit in (1, 2)]
    meters[0].set_values({"voltage_l1": 230.0, "energy_active_import": 1000.0})
    meters[1].set_values({"voltage_l1": 231.0, "energy_active_import": 2000.0})
    async with serve_modbus_tcp(meters) as server, tcp_bus(server.port) as bus:
        readers = [ModbusReader(f"m{unit}", bus, unit, SDM630) for unit in (1, 2)]
        results = await asyncio.gather(*(r.read() for r in readers * 10))
    for index, values in enumerate(results):
        unit = index % 2 + 1
        assert values["voltage_l1"] == 229.0 + unit
        assert values["energy_active_import"] == 1000.0 * unit
    assert bus.transactions == 60
    assert [m.requests_served for m in meters] == [30, 30]
    assert server.connections == 1


async def test_a_silent_unit_times_out_while_another_bus_is_read_on_time(
    sdm630_server: tuple[int, SimulatedMeter],
) -> None:
    good_port, _ = sdm630_server
    silent = SimulatedMeter(SDM630, unit_id=7)
    silent.unresponsive = True
    async with (
        serve_modbus_tcp([silent]) as silent_server,
        tcp_bus(silent_server.port) as silent_bus,
        tcp_bus(good_port) as good_bus,
    ):
        slow = ModbusReader("dead", silent_bus, 7, SDM630, timeout_secs=0.3)
        fast = ModbusReader("incomer", good_bus, 1, SDM630, timeout_secs=0.3)
        (slow_secs, slow_result), (fast_secs, fast_result) = await asyncio.gather(
            timed(slow.read()), timed(fast.read())
        )
    assert isinstance(slow_result, MeterReadError) and slow_result.kind == "timeout"
    assert 0.3 <= slow_secs < 0.6
    assert fast_result == SDM630_VALUES
    assert fast_secs < 0.2
    assert silent.requests_seen == 1  # gave up after the first block, no retries


async def test_a_silent_unit_behind_a_gateway_does_not_break_its_neighbours() -> None:
    alive, silent = SimulatedMeter(SDM630, unit_id=1), SimulatedMeter(SDM630, unit_id=2)
    alive.set_values(SDM630_VALUES)
    silent.set_values(SDM630_VALUES)
    silent.unresponsive = True
    async with serve_modbus_tcp([alive, silent]) as server, tcp_bus(server.port) as bus:
        good = ModbusReader("a", bus, 1, SDM630, timeout_secs=0.3)
        dead = ModbusReader("b", bus, 2, SDM630, timeout_secs=0.3)
        assert (await read_error(dead.read())).kind == "timeout"
        assert await good.read() == SDM630_VALUES
        assert server.connections == 1  # one silent unit is no reason to reconnect
        quick = ModbusReader("b", bus, 2, SDM630, timeout_secs=0.05)
        for _ in range(3):  # ...but nothing answering at all may be a half-open connection
            assert (await read_error(quick.read())).kind == "timeout"
        assert await good.read() == SDM630_VALUES
        assert server.connections == 2
        silent.unresponsive = False
        assert await dead.read() == SDM630_VALUES


async def test_the_reader_recovers_when_the_server_comes_back() -> None:
    meter = SimulatedMeter(SDM630, unit_id=1)
    meter.set_values(SDM630_VALUES)
    server = SimulatorServer([meter], port=free_port())
    await server.start()
    try:
        async with tcp_bus(server.port, timeout_secs=0.5) as bus:
            reader = ModbusReader("incomer", bus, 1, SDM630)
            assert await reader.read() == SDM630_VALUES
            await server.stop()
            assert (await read_error(reader.read())).kind in {"connection", "timeout"}
            # while it is down, attempts are spaced out by the backoff
            assert (await read_error(reader.read())).kind == "connection"
            await server.start()

            async def read() -> dict[str, float]:
                try:
                    return await reader.read()
                except MeterReadError as exc:
                    assert exc.kind == "connection"
                    raise

            values = await eventually(
                read, timeout=2, interval=0.02, retry_on=MeterReadError, what="a recovery"
            )
            assert values == SDM630_VALUES
            assert server.connections == 2  # same reader and bus, a new connection
    finally:
        await server.stop()


async def test_an_unreachable_endpoint_is_a_connection_error_with_backoff() -> None:
    async with tcp_bus(free_port(), reconnect_initial_secs=10, reconnect_max_secs=10) as bus:
        reader = ModbusReader("m", bus, 1, SDM630)
        first = await read_error(reader.read())
        start = time.monotonic()
        second = await read_error(reader.read())
    assert (first.kind, second.kind) == ("connection", "connection")
    assert "cannot connect" in str(first)
    assert "next attempt in" in str(second)
    assert time.monotonic() - start < 0.1


async def test_an_illegal_address_answer_is_an_exception_error() -> None:
    meter = SimulatedMeter(small_map(("voltage_l1", 0)), unit_id=1)
    meter.set_values({"voltage_l1": 230.0})
    async with serve_modbus_tcp([meter]) as server, tcp_bus(server.port) as bus:
        beyond = small_map(("voltage_l1", 0), ("frequency", 0x300))
        error = await read_error(ModbusReader("m", bus, 1, beyond).read())
        assert error.kind == "exception"
        assert "illegal data address" in str(error)
        meter.exception_code = ExcCodes.DEVICE_FAILURE
        error = await read_error(ModbusReader("m", bus, 1, meter.register_map).read())
        assert error.kind == "exception"
        assert "device failure" in str(error)
        meter.exception_code = None
        assert await ModbusReader("m", bus, 1, meter.register_map).read() == {"voltage_l1": 230.0}


async def test_garbage_registers_fail_the_read_but_not_an_optional_channel(
    sdm630_server: tuple[int, SimulatedMeter],
) -> None:
    port, meter = sdm630_server
    async with tcp_bus(port) as bus:
        reader = ModbusReader("incomer", bus, 1, SDM630)
        meter.set_words("input", 0x00E0, [0x7FC0, 0x0000])  # current_n (optional) is NaN
        values = await reader.read()
        assert "current_n" not in values
        assert values == {k: v for k, v in SDM630_VALUES.items() if k != "current_n"}
        meter.garbage = True
        assert (await read_error(reader.read())).kind == "garbage"


async def test_forbidden_ranges_are_never_read() -> None:
    hole = {"forbidden": [{"table": "input", "first": 4, "last": 5}], "max_gap": 20}
    register_map = small_map(("voltage_l1", 0), ("voltage_l2", 2), ("voltage_l3", 6), **hole)
    meter = SimulatedMeter(register_map, unit_id=1)
    meter.set_values({"voltage_l1": 1.0, "voltage_l2": 2.0, "voltage_l3": 3.0})
    async with serve_modbus_tcp([meter]) as server, tcp_bus(server.port) as bus:
        # the simulated device answers "illegal address" for the hole, so a read through it fails
        with pytest.raises(MeterReadError, match="illegal data address"):
            await bus.read_registers(1, "input", 0, 8)
        values = await ModbusReader("m", bus, 1, register_map).read()
    assert values == {"voltage_l1": 1.0, "voltage_l2": 2.0, "voltage_l3": 3.0}
    assert meter.served == [("input", 0, 4), ("input", 6, 2)]


async def test_a_bus_closes_twice_and_refuses_reads_after() -> None:
    meter = SimulatedMeter(small_map(("voltage_l1", 0)), unit_id=1)
    async with serve_modbus_tcp([meter]) as server:
        bus = tcp_bus(server.port)
        async with bus:
            assert await bus.read_registers(1, "input", 0, 2) == [0, 0]
        await bus.aclose()
        error = await read_error(bus.read_registers(1, "input", 0, 2))
    assert error.kind == "connection"
    assert "closed" in str(error)
