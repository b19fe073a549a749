"""Buses on real lines: RTU over socat ptys (stable link names, unplugged and replugged), RTU
over TCP through a socat "serial server", the inter-frame gap, fault kinds and bus counters."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.health import BusState, Health
from drivers.base import MeterReadError
from drivers.factory import build_bus, open_readers
from drivers.modbus.bus import ModbusBus
from drivers.modbus.reader import ModbusReader
from drivers.modbus.register_map import RegisterMap, load_builtin
from drivers.modbus.transports import ModbusRtuBus, ModbusRtuOverTcpBus, ModbusTcpBus, rtu_gap_secs
from drivers.simulator import sunspec_meter
from gateway.config.schema import Config
from tests.fakes.modbus_device import SimulatedMeter, SimulatorServer, serve_modbus_tcp
from tests.fixtures.modbus import SDM630_VALUES
from tests.fixtures.network import free_port
from tests.fixtures.socat import PtyPair, TcpToSerial
from tests.helpers.eventually import eventually

SDM630 = load_builtin("sdm630")
#: A second, different model: holding registers, little-endian word order, a scaled s32.
HOLDING_METER = RegisterMap.model_validate(
    {
        "model": "holding-meter",
        "registers": [
            {"channel": "voltage_l1", "address": 0, "table": "holding", "type": "u16",
             "scale": 0.1},
            {"channel": "power_active", "address": 10, "table": "holding", "type": "s32",
             "word_order": "little"},
            {"channel": "energy_active_import", "address": 20, "table": "holding", "type": "u32",
             "scale": 100},
        ],
    }
)  # fmt: skip
HOLDING_VALUES = {"voltage_l1": 231.4, "power_active": -1234.0, "energy_active_import": 98_700.0}
#: Reconnect backoff for tests: first retry after 20 ms, never more than 100 ms apart.
BACKOFF_INITIAL, BACKOFF_MAX = 0.02, 0.1


class LineLog(SimulatorServer):
    """The device end of a line that timestamps every frame and can damage its answers."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.frames: list[tuple[float, bool]] = []  # (monotonic, sending)
        self.damage: str | None = None  # "crc" | "short"

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        data = super()._trace_packet(sending, data)
        if data:
            self.frames.append((time.monotonic(), sending))
        if sending and data and self.damage == "crc":
            return data[:-1] + bytes([data[-1] ^ 0x5A])
        if sending and data and self.damage == "short":
            return data[: len(data) // 2]
        return data


def rtu_meters() -> list[SimulatedMeter]:
    sdm = SimulatedMeter(SDM630, unit_id=1)
    sdm.set_values(SDM630_VALUES)
    other = SimulatedMeter(HOLDING_METER, unit_id=7)
    other.set_values(HOLDING_VALUES)
    return [sdm, other]


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[tuple[PtyPair, LineLog]]:
    """An RS-485 line at 9600 baud: SDM630 (unit 1) and a holding-register meter (unit 7)."""
    async with PtyPair(tmp_path, gateway="serial-by-id-usb-FTDI-if00") as pair:
        server = LineLog(rtu_meters(), serial_port=pair.device, baudrate=9600)
        await server.start()
        try:
            yield pair, server
        finally:
            await server.stop()


def test_the_gap_is_three_and_a_half_characters_of_the_configured_framing() -> None:
    assert rtu_gap_secs(9600) == pytest.approx(3.5 * 10 / 9600)  # 8N1: 10 bits a character
    assert rtu_gap_secs(9600, parity="E") == pytest.approx(3.5 * 11 / 9600)
    assert rtu_gap_secs(2400, stopbits=2) == pytest.approx(3.5 * 11 / 2400)
    assert rtu_gap_secs(19200) == pytest.approx(3.5 * 10 / 19200)
    assert rtu_gap_secs(115200) == 0.00175  # the spec's fixed value above 19200 baud


async def test_two_models_on_one_line_through_a_by_id_link(
    line: tuple[PtyPair, LineLog],
) -> None:
    pair, server = line
    assert is_link(pair.gateway)
    async with ModbusRtuBus("rs485", pair.gateway, baudrate=9600, timeout_secs=0.5) as bus:
        sdm = ModbusReader("incomer", bus, 1, SDM630)
        other = ModbusReader("pump", bus, 7, HOLDING_METER)
        results = await asyncio.gather(*(r.read() for r in [sdm, other] * 3))
    for values in results[0::2]:
        assert values == SDM630_VALUES
    for values in results[1::2]:
        assert values == pytest.approx(HOLDING_VALUES)
    assert bus.health.transactions == 3 * (3 + 1)
    assert dict(bus.health.errors) == {}
    # one transaction at a time on the line: every request is answered before the next one
    directions = [sending for _, sending in server.frames]
    assert directions == [False, True] * (len(directions) // 2)


async def test_the_line_is_quiet_for_the_inter_frame_gap_between_transactions(
    line: tuple[PtyPair, LineLog],
) -> None:
    pair, server = line
    async with ModbusRtuBus("rs485", pair.gateway, baudrate=9600, timeout_secs=0.5) as bus:
        assert bus.inter_frame_gap_secs == pytest.approx(3.5 * 10 / 9600)
        sdm = ModbusReader("incomer", bus, 1, SDM630)
        other = ModbusReader("pump", bus, 7, HOLDING_METER)
        await asyncio.gather(sdm.read(), other.read(), sdm.read())
        silences = [
            request - answer
            for (answer, a_sending), (request, r_sending) in itertools.pairwise(server.frames)
            if a_sending and not r_sending
        ]
    assert len(silences) == 6  # 3 + 1 + 3 requests, across two units
    assert min(silences) >= bus.inter_frame_gap_secs


async def test_a_configured_gap_is_kept_even_between_two_meters(
    line: tuple[PtyPair, LineLog],
) -> None:
    pair, server = line
    async with ModbusRtuBus(
        "rs485", pair.gateway, baudrate=9600, timeout_secs=0.5, inter_frame_gap_secs=0.03
    ) as bus:
        await ModbusReader("pump", bus, 7, HOLDING_METER).read()
        await ModbusReader("incomer", bus, 1, SDM630).read()
    sent = [t for t, sending in server.frames if sending]
    received = [t for t, sending in server.frames if not sending]
    assert all(r - s >= 0.03 for s, r in zip(sent, received[1:], strict=False))


async def test_crc_errors_and_short_frames_are_told_apart_from_silence(
    line: tuple[PtyPair, LineLog],
) -> None:
    pair, server = line
    async with ModbusRtuBus("rs485", pair.gateway, baudrate=9600, timeout_secs=0.2) as bus:
        reader = ModbusReader("pump", bus, 7, HOLDING_METER)
        kinds, messages = [], []
        for damage in ("crc", "short", None):
            server.damage = damage
            try:
                await reader.read()
                kinds.append("ok")
            except MeterReadError as exc:
                kinds.append(exc.kind)
                messages.append(str(exc))
        server.meters[7].unresponsive = True
        with pytest.raises(MeterReadError) as silent:
            await reader.read()
    assert kinds == ["crc", "short_frame", "ok"]
    assert silent.value.kind == "timeout"
    assert dict(bus.health.errors) == {"crc": 1, "short_frame": 1, "timeout": 1}
    assert "CRC check failed" in messages[0]
    assert "cut short (24 of 49 bytes)" in messages[1]  # 22 registers: 5 + 2 x 22 bytes


async def test_an_unplugged_adapter_is_reopened_when_it_comes_back(tmp_path: Path) -> None:
    """USB adapter unplugged: the by-id link vanishes; plugged in again: same link, new tty."""
    pair = PtyPair(tmp_path, gateway="usb-FTDI_FT232R-if00-port0")
    meters = rtu_meters()
    await pair.start()
    server = SimulatorServer(meters, serial_port=pair.device, baudrate=9600)
    await server.start()
    try:
        async with ModbusRtuBus(
            "rs485",
            pair.gateway,
            baudrate=9600,
            timeout_secs=0.3,
            reconnect_initial_secs=BACKOFF_INITIAL,
            reconnect_max_secs=BACKOFF_MAX,
        ) as bus:
            reader = ModbusReader("incomer", bus, 1, SDM630)
            assert await reader.read() == SDM630_VALUES
            await server.stop()
            await pair.stop()
            assert not exists(pair.gateway)
            first = await read_error(reader)
            assert first.kind == "connection"
            assert state_of(bus) is BusState.OFFLINE
            # while it is away, attempts are spaced by the backoff, not made on every read
            assert "next attempt in" in str(await read_error(reader))
            await pair.start()
            await server.start()
            values = await read_until_ok(reader, within=2.0)
            assert values == SDM630_VALUES
            assert state_of(bus) is BusState.OK
            assert bus.health.reconnects == 1
    finally:
        await server.stop()
        await pair.stop()


async def test_rtu_over_tcp_through_a_serial_server_that_drops(tmp_path: Path) -> None:
    async with PtyPair(tmp_path) as pair:
        server = SimulatorServer(rtu_meters(), serial_port=pair.device, baudrate=9600)
        await server.start()
        converter = TcpToSerial(free_port(), pair.gateway)
        await converter.start()
        try:
            async with ModbusRtuOverTcpBus(
                "converter",
                "127.0.0.1",
                converter.port,
                timeout_secs=0.5,
                reconnect_initial_secs=BACKOFF_INITIAL,
                reconnect_max_secs=BACKOFF_MAX,
            ) as bus:
                sdm = ModbusReader("incomer", bus, 1, SDM630)
                other = ModbusReader("pump", bus, 7, HOLDING_METER)
                for values in await asyncio.gather(sdm.read(), other.read(), sdm.read()):
                    assert values in (SDM630_VALUES, pytest.approx(HOLDING_VALUES))
                await converter.stop()  # the converter reboots: the connection drops
                assert (await read_error(sdm)).kind in {"connection", "timeout"}
                await converter.start()
                assert await read_until_ok(sdm, within=2.0) == SDM630_VALUES
                assert bus.health.reconnects == 1
        finally:
            await converter.stop()
            await server.stop()


async def test_tcp_bus_counts_transactions_busy_time_and_errors() -> None:
    alive = SimulatedMeter(SDM630, unit_id=1)
    alive.set_values(SDM630_VALUES)
    silent = SimulatedMeter(SDM630, unit_id=2)
    silent.unresponsive = True
    health = Health()
    async with (
        serve_modbus_tcp([alive, silent]) as server,
        ModbusTcpBus(
            "plant", "127.0.0.1", server.port, timeout_secs=0.2, health=health.bus("plant")
        ) as bus,
    ):
        await ModbusReader("a", bus, 1, SDM630).read()
        await read_error(ModbusReader("b", bus, 2, SDM630))
    stats = health.buses["plant"]
    assert stats.transactions == 4
    assert dict(stats.errors) == {"timeout": 1}
    assert stats.state is BusState.OK
    assert 0.2 <= stats.busy_s < 0.4  # dominated by the one timeout
    assert 0 < stats.utilisation() <= 1


async def test_the_factory_builds_every_bus_type_and_fills_bus_health(tmp_path: Path) -> None:
    config = Config.model_validate(
        {
            "gateway": {"id": "site"},
            "buses": {
                "rs485": {"type": "modbus-rtu", "port": "/dev/serial/by-id/none", "baudrate": 19200,
                          "parity": "E", "inter_frame_gap_ms": 5},
                "line2": {"type": "modbus-rtu", "port": "/dev/ttyAMA0", "baudrate": 9600},
                "converter": {"type": "modbus-rtu-over-tcp", "host": "127.0.0.1",
                              "port": free_port(), "timeout_secs": 0.5},
            },
            "meters": [
                {"id": "a", "bus": "rs485", "unit": 1, "model": "sdm630"},
                {"id": "b", "bus": "line2", "unit": 2, "model": "sdm630"},
                {"id": "c", "bus": "converter", "unit": 3, "model": "sdm630"},
            ],
        }
    )  # fmt: skip
    health = Health()
    async with open_readers(config, health=health) as readers:
        buses: dict[str, ModbusBus] = {
            name: reader.bus for name, reader in readers.items() if isinstance(reader, ModbusReader)
        }
        assert isinstance(buses["a"], ModbusRtuBus) and buses["a"].inter_frame_gap_secs == 0.005
        assert buses["b"].inter_frame_gap_secs == pytest.approx(3.5 * 10 / 9600)
        assert isinstance(buses["c"], ModbusRtuOverTcpBus) and buses["c"].framing == "rtu"
        assert (await read_error(readers["c"])).kind == "connection"  # nothing listens
    assert set(health.buses) == {"rs485", "line2", "converter"}
    assert health.buses["converter"].state is BusState.OFFLINE
    assert health.buses["converter"].errors["connection"] == 1
    assert isinstance(build_bus("x", config.buses["converter"]), ModbusRtuOverTcpBus)


def state_of(bus: ModbusBus) -> BusState:
    return bus.health.state


def is_link(path: str) -> bool:
    return Path(path).is_symlink()


def exists(path: str) -> bool:
    return Path(path).exists()


async def test_a_sunspec_meter_is_discovered_at_its_first_read_and_then_read_by_plan() -> None:
    device = sunspec_meter((203,), unit_id=3)
    device.tick(1_800_000_000.0)
    not_sunspec = SimulatedMeter(SDM630, unit_id=4)
    async with serve_modbus_tcp([device, not_sunspec]) as server:
        config = Config.model_validate(
            {
                "gateway": {"id": "site"},
                "buses": {"pv": {"type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}},
                "meters": [
                    {"id": "grid", "bus": "pv", "unit": 3, "model": "sunspec"},
                    {"id": "wrong", "bus": "pv", "unit": 4, "model": "sunspec"},
                ],
            }
        )
        async with open_readers(config) as readers:
            reader = readers["grid"]
            assert isinstance(reader, ModbusReader) and reader.register_map is None
            values = await reader.read()
            assert reader.register_map is not None and "203" in reader.register_map.description
            device.reset_counters()
            assert await reader.read() == values
            assert len(device.served) == len(reader.plan)  # no second discovery
            error = await read_error(readers["wrong"])
            assert error.kind == "garbage" and "SunS" in str(error)
            assert (await read_error(readers["wrong"])).kind == "garbage"  # tried again
    assert {"voltage_l1", "frequency", "energy_active_import"} <= device.values.keys()
    for channel, value in device.values.items():
        assert values[channel] == pytest.approx(value, rel=1e-3), channel


async def test_a_dead_unit_does_not_make_a_serial_bus_reopen_its_port(
    line: tuple[PtyPair, LineLog],
) -> None:
    pair, server = line
    server.meters[7].unresponsive = True
    async with ModbusRtuBus("rs485", pair.gateway, baudrate=9600, timeout_secs=0.05) as bus:
        sdm = ModbusReader("incomer", bus, 1, SDM630)
        dead = ModbusReader("pump", bus, 7, HOLDING_METER)
        for _ in range(4):
            assert (await read_error(dead)).kind == "timeout"
        assert await sdm.read() == SDM630_VALUES
    assert bus.health.reconnects == 0 and bus.health.errors["timeout"] == 4


async def read_error(reader: object) -> MeterReadError:
    assert isinstance(reader, ModbusReader)
    with pytest.raises(MeterReadError) as caught:
        await reader.read()
    return caught.value


async def read_until_ok(reader: ModbusReader, *, within: float) -> dict[str, float]:
    async def read() -> dict[str, float]:
        try:
            return await reader.read()
        except MeterReadError as exc:
            assert exc.kind in {"connection", "timeout"}, exc
            raise

    return await eventually(
        read, timeout=within, interval=0.02, retry_on=MeterReadError, what="a recovery"
    )
