"""`meter-gateway read | scan | registers` against simulated meters on loopback TCP and on an
RS-485 line made of a socat pty pair at 9600 baud. The commands run as real subprocesses (exit
codes and output as an installer sees them); the model-guessing details run in-process."""

from __future__ import annotations

import asyncio
import io
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pymodbus.constants import ExcCodes

from drivers.modbus.register_map import RegisterMap, builtin_models, load_builtin
from drivers.simulator import sunspec_meter
from gateway.cli.commissioning import (
    EXIT_DEVICE,
    EXIT_OK,
    format_units,
    format_value,
    parse_units,
    read_meter,
    scan_bus,
)
from gateway.config.schema import Config
from tests.fakes.modbus_device import SimulatedMeter, SimulatorServer, serve_modbus_tcp
from tests.fixtures.modbus import SDM630_VALUES
from tests.fixtures.network import free_port
from tests.fixtures.socat import PtyPair

SDM630 = load_builtin("sdm630")
#: Not built in: a holding-register meter with scaled integers (another family's layout).
INTEGER_METER = RegisterMap.model_validate(
    {
        "model": "integer-meter",
        "registers": [
            {"channel": "voltage_l1", "address": 0, "table": "holding", "type": "u16",
             "scale": 0.1},
            {"channel": "frequency", "address": 1, "table": "holding", "type": "u16",
             "scale": 0.01},
            {"channel": "power_active", "address": 10, "table": "holding", "type": "s32",
             "word_order": "little"},
            {"channel": "energy_active_import", "address": 20, "table": "holding",
             "type": "u32", "scale": 100},
        ],
    }
)  # fmt: skip
INTEGER_VALUES = {
    "voltage_l1": 231.4,
    "frequency": 50.02,
    "power_active": -1234.0,
    "energy_active_import": 98_700.0,
}


class Line(SimulatorServer):
    """Like a real line, a unit id nobody has gets no answer (pymodbus' simulator would send
    exception 4 for it)."""

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        data = super()._trace_packet(sending, data)
        unit = data[0] if self.serial_port is not None else (data[6] if len(data) > 6 else -1)
        return b"" if sending and data and unit not in self.meters else data


async def cli(*args: str) -> tuple[int, str, str]:
    """Run `meter-gateway ARGS` as a subprocess: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def write_config(tmp_path: Path, buses: dict[str, Any], meters: list[dict[str, Any]]) -> str:
    path = tmp_path / "config.yaml"
    document = {"gateway": {"id": "site", "data_dir": str(tmp_path)}, "buses": buses}
    path.write_text(yaml.safe_dump(document | {"meters": meters}))
    return str(path)


def parse_config(path: str) -> Config:
    return Config.model_validate(yaml.safe_load(Path(path).read_text()))


def table_rows(output: str) -> dict[str, list[str]]:
    """First column -> the other columns, for every line of a printed table."""
    return {line.split()[0]: line.split()[1:] for line in output.splitlines() if line.strip()}


@pytest.fixture
async def plant(tmp_path: Path) -> AsyncIterator[tuple[str, SimulatedMeter]]:
    """(config path, meter): an SDM630 (unit 1) and a silent unit 2 behind a TCP endpoint."""
    meter = SimulatedMeter(SDM630, unit_id=1)
    meter.set_values(SDM630_VALUES)
    silent = SimulatedMeter(SDM630, unit_id=2)
    silent.unresponsive = True
    async with serve_modbus_tcp([meter, silent]) as server:
        config = write_config(
            tmp_path,
            {"plant": {"type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}},
            [
                {"id": "incomer", "bus": "plant", "unit": 1, "model": "sdm630"},
                {"id": "gone", "bus": "plant", "unit": 2, "model": "sdm630", "timeout_secs": 0.2},
            ],
        )
        yield config, meter


async def test_read_prints_every_channel_with_its_value_and_unit(
    plant: tuple[str, SimulatedMeter],
) -> None:
    config, _ = plant
    code, out, err = await cli("read", "incomer", "-c", config)
    assert code == 0, err
    assert out.splitlines()[0].startswith("incomer: unit 1 on modbus-tcp 127.0.0.1:")
    rows = table_rows(out)
    for channel, value in SDM630_VALUES.items():
        unit = [] if channel.startswith("power_factor") else [SDM630.register(channel).unit]
        unit = ["Wh"] if channel.startswith("energy_active") else unit
        unit = ["varh"] if channel.startswith("energy_reactive") else unit
        assert rows[channel] == [format_value(value), *unit], channel


async def test_read_raw_shows_the_registers_as_they_came_off_the_wire(
    plant: tuple[str, SimulatedMeter],
) -> None:
    config, _ = plant
    code, out, _ = await cli("read", "incomer", "-c", config, "--raw")
    assert code == 0
    rows = table_rows(out)
    # 230.5 V is float32 0x43668000; 12 345.5 kWh is held in kWh and shown in Wh
    assert rows["voltage_l1"] == ["230.5", "V", "input", "0", "(0x0000)", "f32", "4366", "8000"]
    kwh = struct.unpack(">HH", struct.pack(">f", 12_345.5))
    assert rows["energy_active_import"][-2:] == [f"{w:04X}" for w in kwh]
    assert rows["energy_active_import"][0] == "12345500"


async def test_read_exit_codes_tell_a_dead_device_from_a_wrong_config(
    plant: tuple[str, SimulatedMeter], tmp_path: Path
) -> None:
    config, _ = plant
    code, out, err = await cli("read", "gone", "-c", config)
    assert (code, out) == (EXIT_DEVICE, "")
    assert "timeout" in err and "unit 2" in err and "check unit id" in err
    code, _, err = await cli("read", "nobody", "-c", config)
    assert code == 2
    assert "no meter 'nobody'" in err and "incomer, gone" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("gateway: {id: site}\nmeters:\n  - {id: x, bus: nowhere, model: sdm630}\n")
    code, _, err = await cli("read", "x", "-c", str(broken))
    assert code == 2
    assert f"{broken}:3" in err and "no bus named 'nowhere'" in err


async def test_registers_prints_a_map_and_its_read_plan(tmp_path: Path) -> None:
    code, out, _ = await cli("registers", "sdm630")
    assert code == 0
    rows = table_rows(out)
    for register in SDM630.registers:
        assert rows[register.channel][:3] == [
            register.table,
            str(register.address),
            f"0x{register.address:04X}",
        ]
    assert rows["energy_active_import"][5:8] == ["1000", "kWh", "Wh"]
    assert "read plan: 3 request(s): input 0+80, input 200+26, input 342+10" in out
    code, _, err = await cli("registers", "sdm9999")
    assert code == 2 and "sdm630" in err  # lists what exists
    bad = tmp_path / "mine.yaml"
    bad.write_text(
        "model: mine\nregisters:\n  - {channel: volts, address: 0, table: input, type: f32}\n"
    )
    code, _, err = await cli("registers", str(bad))
    assert code == 2 and f"{bad}:3" in err and "unknown channel" in err


def test_unit_ranges() -> None:
    assert parse_units("1-3,7, 10-11") == [1, 2, 3, 7, 10, 11]
    assert format_units([1, 2, 3, 7, 10, 11]) == "1-3,7,10-11"
    assert parse_units("247") == [247]
    for wrong in ("0-3", "5-2", "248", "a", "1-"):
        with pytest.raises(ValueError):
            parse_units(wrong)


# --- an RS-485 line at 9600 baud --------------------------------------------------------------


def plausible(register_map: RegisterMap, unit: int) -> SimulatedMeter:
    """A device with the values a working meter shows (the demo's), not all zeros."""
    meter = SimulatedMeter(register_map, unit_id=unit)
    meter.tick(1_800_000_000.0)
    return meter


@pytest.fixture
async def rs485(tmp_path: Path) -> AsyncIterator[tuple[str, dict[int, SimulatedMeter]]]:
    """(config path, devices): two models on one line, an Eastron SDM630 at unit 1 (float32
    input registers) and a Carlo Gavazzi EM24 at unit 7 (scaled integers), and at unit 9 a
    meter whose layout no built-in map has."""
    devices = {1: plausible(SDM630, 1), 7: plausible(load_builtin("em24"), 7)}
    devices[9] = SimulatedMeter(INTEGER_METER, unit_id=9)
    devices[9].set_values(INTEGER_VALUES)
    async with PtyPair(tmp_path, gateway="usb-FTDI_FT232R_USB_UART-if00-port0") as pair:
        server = Line(list(devices.values()), serial_port=pair.device, baudrate=9600)
        await server.start()
        try:
            config = write_config(
                tmp_path,
                {"rs485": {"type": "modbus-rtu", "port": pair.gateway, "baudrate": 9600,
                           "timeout_secs": 0.3}},
                [{"id": "incomer", "bus": "rs485", "unit": 1, "model": "sdm630"},
                 {"id": "heatpump", "bus": "rs485", "unit": 7, "model": "em24"}],
            )  # fmt: skip
            yield config, devices
        finally:
            await server.stop()


async def test_scan_finds_the_units_on_a_line_and_tells_their_models_apart(
    rs485: tuple[str, dict[int, SimulatedMeter]],
) -> None:
    config, _ = rs485
    out = io.StringIO()
    code = await scan_bus(
        parse_config(config),
        "rs485",
        parse_units("1-2,7,9"),
        timeout_secs=0.1,
        models=[SDM630, load_builtin("em24"), INTEGER_METER],
        out=out,
    )
    assert code == EXIT_OK
    rows = table_rows(out.getvalue().split("\n", 1)[1])
    assert set(rows) == {"unit", "1", "7", "9", "answered:"}  # header, units, the summary
    # both say what they are in their identity registers: certain, no guessing
    assert rows["1"][:2] == ["sdm630", "identified"]
    assert " ".join(rows["1"][2:]) == "identity holding 0xFC02 = 0x0070"
    assert rows["7"][:2] == ["em24", "identified"]
    assert " ".join(rows["7"][2:]) == "identity holding 0x000B = 0x0047"
    # no identity registers: the plausibility fit, and it says it is a guess
    assert rows["9"][:2] == ["integer-meter", "likely"]
    assert "answered: 3 of 4 unit(s)" in out.getvalue()


async def test_scan_and_read_from_the_command_line_on_rs485(
    rs485: tuple[str, dict[int, SimulatedMeter]],
) -> None:
    config, devices = rs485
    code, out, err = await cli(
        "scan", "rs485", "-c", config, "--units", "1-2,7,9", "--timeout", "0.1"
    )
    assert code == 0, err
    rows = table_rows(out)
    assert rows["1"][0] == "sdm630"
    assert rows["7"][0] == "em24"
    assert rows["9"][0] == "unknown"  # it answers, but in no built-in map's layout
    assert "2" not in rows
    for meter, unit in (("incomer", 1), ("heatpump", 7)):
        code, out, err = await cli("read", meter, "-c", config)
        assert code == 0, err
        rows = table_rows(out)
        for channel, value in devices[unit].values.items():
            shown = float(rows[channel][0])
            assert shown == pytest.approx(value, rel=1e-3, abs=0.01), (meter, channel)


async def test_scan_of_an_empty_line_fails_and_of_a_missing_bus_is_a_config_error(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        {"plant": {"type": "modbus-tcp", "host": "127.0.0.1", "port": free_port()}},
        [],
    )
    code, _, err = await cli("scan", "plant", "-c", config, "--units", "1-2")
    assert code == EXIT_DEVICE and "cannot connect" in err
    code, _, err = await cli("scan", "rs485", "-c", config)
    assert code == 2 and "no bus 'rs485'" in err


async def test_scan_recognises_a_sunspec_device_by_its_marker(tmp_path: Path) -> None:
    device = sunspec_meter((203,), unit_id=3, base=50000)
    device.tick(1_800_000_000.0)
    # the same registers without the marker are not SunSpec
    empty = SimulatedMeter(device.register_map, unit_id=4)
    server = Line([device, empty])
    await server.start()
    try:
        config = Config.model_validate(
            {
                "gateway": {"id": "site"},
                "buses": {"pv": {"type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}},
            }
        )
        out = io.StringIO()
        code = await scan_bus(config, "pv", [3, 4, 5], timeout_secs=0.1, models=[SDM630], out=out)
    finally:
        await server.stop()
    assert code == EXIT_OK
    rows = table_rows(out.getvalue().split("\n", 1)[1])
    assert rows["3"] == ["sunspec", "identified", "SunS", "marker", "at", "holding", "50000"]
    assert rows["4"][:2] == ["unknown", "-"]
    assert "5" not in rows


async def test_read_discovers_a_sunspec_meter() -> None:
    device = sunspec_meter((203,), unit_id=2)
    device.tick(1_800_000_000.0)
    async with serve_modbus_tcp([device]) as server:
        config = Config.model_validate(
            {
                "gateway": {"id": "site"},
                "buses": {"pv": {"type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}},
                "meters": [{"id": "grid", "bus": "pv", "unit": 2, "model": "sunspec"}],
            }
        )
        out = io.StringIO()
        assert await read_meter(config, "grid", raw=True, out=out) == EXIT_OK
    header, table = out.getvalue().split("\n", 1)
    assert "model sunspec (" in header and "203" in header
    rows = table_rows(table)
    for channel, value in device.values.items():
        assert float(rows[channel][0]) == pytest.approx(value, rel=1e-3), channel
        address = device.register_map.register(channel).address
        assert f"holding {address} (0x{address:04X})" in " ".join(rows[channel]), channel


async def test_scan_knows_every_built_in_model_at_least_as_a_fit() -> None:
    """Each built-in model, simulated with a working meter's values, is the likely model or
    among the maps that also fit (related models share layouts)."""
    models = [m for m in builtin_models() if m != "sunspec"]
    devices = [plausible(load_builtin(m), unit) for unit, m in enumerate(models, start=1)]
    async with serve_modbus_tcp(devices) as server:
        config = Config.model_validate(
            {
                "gateway": {"id": "site"},
                "buses": {
                    "plant": {"type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}
                },
            }
        )
        out = io.StringIO()
        code = await scan_bus(config, "plant", list(range(1, len(models) + 1)), out=out)
    assert code == EXIT_OK
    rows = table_rows(out.getvalue().split("\n", 1)[1])
    for unit, model in enumerate(models, start=1):
        likely, certainty = rows[str(unit)][:2]
        if load_builtin(model).identity:  # it says what it is: exactly that, and certain
            assert (likely, certainty) == (model, "identified"), rows[str(unit)]
            continue
        evidence = " ".join(rows[str(unit)][2:])
        fits = [likely] + evidence.split("also fits ", 1)[-1].split(", ") * ("also" in evidence)
        assert model in fits, (model, rows[str(unit)])
    assert sum(rows[str(u)][0] == m for u, m in enumerate(models, start=1)) >= len(models) * 2 // 3


async def test_scan_tells_eastron_models_of_one_layout_apart_by_their_meter_code() -> None:
    """SDM630, SDM72 and SDM120 answer at the same input addresses, so values alone cannot tell
    them apart; the meter code at holding 0xFC02 can. A unit whose code belongs to no map is
    not reported as one that claims another code, however well that map's layout fits."""
    sdm630, sdm72, sdm120 = (load_builtin(m) for m in ("sdm630", "sdm72", "sdm120"))
    devices = [plausible(sdm630, 1), plausible(sdm72, 2), plausible(sdm120, 3)]
    devices[2].set_words("holding", 0xFC02, [0x0020])  # a code none of our maps lists
    devices.append(plausible(sdm120, 4))  # firmware without the register: exception 2
    async with serve_modbus_tcp(devices) as server:
        config = Config.model_validate(
            {
                "gateway": {"id": "site"},
                "buses": {"din": {"type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}},
            }
        )
        out = io.StringIO()
        code = await scan_bus(
            config, "din", [1, 2, 3, 4], timeout_secs=0.2, models=[sdm630, sdm72, sdm120], out=out
        )
    assert code == EXIT_OK
    rows = table_rows(out.getvalue().split("\n", 1)[1])
    assert rows["1"][:2] == ["sdm630", "identified"]
    assert rows["2"][:2] == ["sdm72", "identified"]
    assert " ".join(rows["2"][2:]) == "identity holding 0xFC02 = 0x0089"
    assert rows["3"][:2] == ["sdm120", "likely"]
    evidence = " ".join(rows["3"][2:])
    assert "not sdm630 (holding 0xFC02 = 0x0020), sdm72 (holding 0xFC02 = 0x0020)" in evidence
    assert "also fits" not in evidence  # the SDM630/SDM72 layouts fit, but the code says no
    # no answer at the identity register rules nothing out: the layouts that fit are listed
    assert rows["4"][1] == "likely"
    assert "also fits sdm72" in " ".join(rows["4"]) and "not sdm" not in " ".join(rows["4"])


@pytest.mark.parametrize("absent", ["gateway", "gateway-path"])
async def test_scan_through_a_tcp_gateway_counts_no_target_exceptions_as_absent(
    tmp_path: Path, absent: Literal["gateway", "gateway-path"]
) -> None:
    """A serial-to-Ethernet gateway answers exception 0x0B ("target device failed to respond")
    or 0x0A ("gateway path unavailable") for every unit nobody has: those are absent units,
    not a line full of devices. A unit answering any other exception is there."""
    present = SimulatedMeter(SDM630, unit_id=2)
    present.set_values(SDM630_VALUES)
    failing = SimulatedMeter(SDM630, unit_id=4, exception_code=ExcCodes.DEVICE_FAILURE)
    server = SimulatorServer([present, failing], absent_units=absent)
    await server.start()
    try:
        config = write_config(
            tmp_path, {"gw": {"type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}}, []
        )
        out = io.StringIO()
        await scan_bus(parse_config(config), "gw", parse_units("1-6"), timeout_secs=0.3, out=out)
    finally:
        await server.stop()
    rows = table_rows(out.getvalue().split("\n", 1)[1])
    assert {"2", "4"} <= set(rows) and not {"1", "3", "5", "6"} & set(rows)
    assert "answered: 2 of 6 unit(s)" in out.getvalue()
