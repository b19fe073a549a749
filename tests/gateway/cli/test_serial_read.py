"""`meter-gateway read` for serial meters: what an installer sees at the cabinet."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest

from gateway.cli.serial_read import EXIT_DEVICE, EXIT_OK, read_serial_meter
from gateway.config.schema import Config
from tests.fakes.serial_meters import D0Meter, PtyDevice
from tests.fakes.telegrams import D0_BLOCK, D0_IDENTIFICATION, dsmr5_example
from tests.fixtures.socat import PtyPair


def config(bus: dict[str, object], meters: list[dict[str, object]]) -> Config:
    return Config.model_validate(
        {"gateway": {"id": "site-1"}, "buses": {"line": bus}, "meters": meters}
    )


async def test_a_p1_gas_meter_prints_its_value_and_the_meters_own_time(tmp_path: Path) -> None:
    async with PtyPair(tmp_path) as pty, PtyDevice(pty.device) as meter:
        site = config(
            {"type": "dsmr-p1", "port": pty.gateway},
            [{"id": "gas", "bus": "line", "mbus_channel": 1}],
        )
        out = io.StringIO()
        reading = asyncio.create_task(read_serial_meter(site, site.meter("gas"), out=out, raw=True))
        await asyncio.sleep(0.1)
        await meter.write(dsmr5_example())
        assert await reading == EXIT_OK
    text = out.getvalue()
    assert "measured by the meter at 2010-12-09T10:25:00+00:00" in text
    assert re.search(r"^gas_volume +12785\.123 +m3$", text, re.M)
    # --raw: the codes as the meter sent them
    assert re.search(r"^0-1:24\.2\.1 +12785\.123 +m3$", text, re.M)
    assert re.search(r"^1-0:1\.8\.1 +123456\.789 +kWh$", text, re.M)


async def test_a_d0_meter_prints_channels_and_raw_obis_codes(tmp_path: Path) -> None:
    async with PtyPair(tmp_path) as pty, PtyDevice(pty.device) as device:
        site = config(
            {"type": "iec62056-21", "port": pty.gateway, "timeout_secs": 0.3},
            [{"id": "main", "bus": "line"}],
        )
        out = io.StringIO()
        async with D0Meter(device, D0_IDENTIFICATION, D0_BLOCK).running():
            assert await read_serial_meter(site, site.meter("main"), raw=True, out=out) == EXIT_OK
    text = out.getvalue()
    assert re.search(r"^energy_active_import +12345678 +Wh$", text, re.M)
    assert re.search(r"^voltage_l1 +230\.4 +V$", text, re.M)
    assert re.search(r"^1-0:1\.8\.0 +12345\.678 +kWh$", text, re.M)


async def test_a_missing_cable_says_what_to_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = config(
        {"type": "sml", "port": str(tmp_path / "ttyUSB0")}, [{"id": "ehz", "bus": "line"}]
    )
    assert await read_serial_meter(site, site.meter("ehz"), out=io.StringIO()) == EXIT_DEVICE
    error = capsys.readouterr().err
    assert "error: meter ehz: connection:" in error and "dialout" in error


async def test_the_read_command_reads_a_p1_meter_too(tmp_path: Path) -> None:
    """`meter-gateway read` goes through gateway.cli.commissioning for every meter type: a
    P1 meter is read (it was an AssertionError traceback), not refused."""
    from gateway.cli.commissioning import read_meter

    async with PtyPair(tmp_path) as pty, PtyDevice(pty.device) as meter:
        site = config({"type": "dsmr-p1", "port": pty.gateway}, [{"id": "home", "bus": "line"}])
        out = io.StringIO()
        reading = asyncio.create_task(read_meter(site, "home", out=out))
        await asyncio.sleep(0.1)
        await meter.write(dsmr5_example())
        assert await reading == EXIT_OK
    assert re.search(r"^energy_active_import +\d+ +Wh$", out.getvalue(), re.M)


async def test_scan_on_a_serial_bus_says_why_not_and_is_a_usage_error(tmp_path: Path) -> None:
    from gateway.cli.commissioning import CommandError, scan_bus

    site = config({"type": "iec62056-21", "port": str(tmp_path / "tty")}, [])
    with pytest.raises(CommandError, match="scan probes Modbus unit ids"):
        await scan_bus(site, "line", [1, 2])
