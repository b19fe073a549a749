"""`meter-gateway read` on every meter type and `scan` on a serial bus, as an installer runs
them: the real command as a subprocess, against a meter behind a real pty (socat).

Outside material: the SML file is a Holley DTZ541's from smllib's test suite
(tests/fakes/telegrams.py HOLLEY_SML); the P1 telegram is the DSMR 5.0.2 P1 companion
standard's example. (Modbus and SunSpec meters: tests/gateway/cli/test_commissioning.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.serial_meters import D0Meter, PtyDevice
from tests.fakes.telegrams import D0_BLOCK, D0_IDENTIFICATION, HOLLEY_SML, dsmr5_example
from tests.fixtures.socat import PtyPair
from tests.gateway.cli.test_commissioning import cli, write_config


@contextlib.asynccontextmanager
async def pushing(device: PtyDevice, frame: bytes) -> AsyncIterator[None]:
    """A push meter (P1, SML): the same frame every 0.2 s while the command runs."""

    async def push() -> None:
        while True:
            await device.write(frame)
            await asyncio.sleep(0.2)

    task = asyncio.create_task(push())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def answering(device: PtyDevice) -> AsyncIterator[None]:
    async with D0Meter(device, D0_IDENTIFICATION, D0_BLOCK).running():
        yield


CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    # bus settings, meter id, a line the output must have
    "dsmr-p1": ({"type": "dsmr-p1"}, "home", r"^energy_active_import +\d+ +Wh$"),
    "iec62056-21": (
        {"type": "iec62056-21", "timeout_secs": 0.5},
        "main",
        r"^voltage_l1 +230\.4 +V$",
    ),
    "sml": ({"type": "sml"}, "ehz", r"^voltage_l1 +234\.4 +V$"),
}


@pytest.mark.parametrize("bus_type", sorted(CASES))
async def test_read_works_on_every_serial_meter_type(tmp_path: Path, bus_type: str) -> None:
    bus, meter_id, expected = CASES[bus_type]
    async with PtyPair(tmp_path) as pty, PtyDevice(pty.device) as device:
        config = write_config(
            tmp_path, {"line": {**bus, "port": pty.gateway}}, [{"id": meter_id, "bus": "line"}]
        )
        meter = (
            answering(device)
            if bus_type == "iec62056-21"
            else pushing(device, dsmr5_example() if bus_type == "dsmr-p1" else HOLLEY_SML)
        )
        async with meter:
            code, out, err = await cli("read", meter_id, "-c", config)
    assert code == 0, err
    assert "Traceback" not in err
    assert re.search(expected, out, re.M), out


@pytest.mark.parametrize("bus_type", sorted(CASES))
async def test_scan_on_a_serial_bus_exits_2_and_says_why(tmp_path: Path, bus_type: str) -> None:
    bus, meter_id, _ = CASES[bus_type]
    config = write_config(
        tmp_path,
        {"line": {**bus, "port": str(tmp_path / "ttyUSB0")}},
        [{"id": meter_id, "bus": "line"}],
    )
    code, _, err = await cli("scan", "line", "-c", config)
    assert code == 2
    assert "Traceback" not in err
    assert f"is a {bus_type} bus" in err and "Modbus" in err
