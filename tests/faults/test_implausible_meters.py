"""Meters that lie plausibly: well-formed answers that are not answers to our request, and
finite values no meter can measure. The real daemon reads them next to nothing else.

- A Modbus TCP "meter" answering an input-register read (function 4) with a holding-register
  answer (function 3) of the right length; one whose answers carry bytes after the registers
  (the MBAP length covers them, the byte count does not). pymodbus accepts both; the gateway
  must count them as `garbage` and store nothing.
- A simulated SDM630 whose L1 voltage reads -3×10¹² V and whose import counter reads 10³³ Wh
  (finite floats, well-formed frames): each sample is stored flagged `implausible` without
  those values, so no uplink forwards them as good data, and the others are kept as read;
  the counter check is not poisoned by the absurd counter (no `counter_reset` on the next).
- A configured range (`gateway.plausible_ranges`) narrows a channel type: voltages above 260 V
  on this site are implausible.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from drivers.simulator import serve_modbus_tcp
from gateway.daemon import DB_FILE
from tests.faults.conftest import DaemonProcess, sdm630_meters
from tests.fixtures.modbus import SDM630_VALUES
from tests.helpers.eventually import eventually

#: A Modbus TCP read request: MBAP header (7 bytes) + function, address, count (5 bytes).
REQUEST_BYTES = 12


def _answer(mode: str, request: bytes) -> bytes:
    tid, unit, function = request[0:2], request[6], request[7]
    count = int.from_bytes(request[10:12], "big")
    registers = bytes(2 * count)  # zeros: plausible values
    if mode == "wrong-function":
        pdu = bytes([3 if function == 4 else 4, 2 * count]) + registers
    else:  # trailing bytes after the registers
        pdu = bytes([function, 2 * count]) + registers + b"\x12\x34\x56\x78"
    return tid + b"\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + bytes([unit]) + pdu


@contextlib.asynccontextmanager
async def lying_meter(mode: str) -> AsyncIterator[int]:
    """A TCP 'meter' answering every read in `mode`; yields its port."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                writer.write(_answer(mode, await reader.readexactly(REQUEST_BYTES)))
                await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


SITE = """\
gateway:
  id: lies
  timezone: UTC
  data_dir: "{data_dir}"
  clock_check: none
  plausible_ranges: {{voltage: [0, 260]}}
buses:
  absurd: {{type: modbus-tcp, host: 127.0.0.1, port: {absurd}, timeout_secs: 0.5}}
  high: {{type: modbus-tcp, host: 127.0.0.1, port: {high}, timeout_secs: 0.5}}
  wrongfc: {{type: modbus-tcp, host: 127.0.0.1, port: {wrongfc}, timeout_secs: 0.5}}
  trailing: {{type: modbus-tcp, host: 127.0.0.1, port: {trailing}, timeout_secs: 0.5}}
meters:
  - {{id: absurd, bus: absurd, unit: 1, model: sdm630, interval_secs: 200ms}}
  - {{id: high, bus: high, unit: 1, model: sdm630, interval_secs: 200ms}}
  - {{id: wrongfc, bus: wrongfc, unit: 1, model: sdm630, interval_secs: 200ms}}
  - {{id: trailing, bus: trailing, unit: 1, model: sdm630, interval_secs: 200ms}}
"""


def _rows(db: Path) -> dict[str, list[tuple[dict[str, float], list[str]]]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        found = connection.execute("SELECT meter, vals, flags FROM samples ORDER BY id").fetchall()
    connection.close()
    rows: dict[str, list[tuple[dict[str, float], list[str]]]] = {}
    for meter, vals, flags in found:
        parsed = flags.split(",") if flags else []
        rows.setdefault(meter, []).append((json.loads(vals), sorted(parsed)))
    return rows


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_frames_that_do_not_answer_the_request_and_absurd_values_are_not_good_data(
    tmp_path: Path, daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess]
) -> None:
    absurd, high = sdm630_meters(1), sdm630_meters(1)
    absurd[0].set_values({**SDM630_VALUES, "voltage_l1": -3e12, "energy_active_import": 1e33})
    high[0].set_values({**SDM630_VALUES, "voltage_l2": 400.0})
    data_dir = tmp_path / "data"
    async with (
        serve_modbus_tcp(absurd) as absurd_server,
        serve_modbus_tcp(high) as high_server,
        lying_meter("wrong-function") as wrongfc,
        lying_meter("trailing") as trailing,
    ):
        config = tmp_path / "site.yaml"
        config.write_text(
            SITE.format(
                data_dir=data_dir,
                absurd=absurd_server.port,
                high=high_server.port,
                wrongfc=wrongfc,
                trailing=trailing,
            )
        )
        daemon = daemon_factory(config, {})
        await daemon.start()
        await daemon.wait_running()
        await eventually(
            lambda: (
                len(_rows(data_dir / DB_FILE).get("absurd", [])) >= 4
                and len(_rows(data_dir / DB_FILE).get("high", [])) >= 4
            ),
            timeout=10,
            what="samples of the absurd meters",
        )
        await asyncio.sleep(0.5)
        assert await daemon.stop() == 0
    rows = _rows(data_dir / DB_FILE)
    assert "wrongfc" not in rows and "trailing" not in rows  # no sample from a wrong answer
    log = daemon.log_text()
    assert "meter wrongfc is" in log and "garbage" in log
    assert "meter trailing is" in log
    for values, flags in rows["absurd"]:
        assert flags == ["implausible"], flags
        assert "voltage_l1" not in values and "energy_active_import" not in values
        assert values["voltage_l2"] == pytest.approx(SDM630_VALUES["voltage_l2"], rel=1e-6)
    for values, flags in rows["high"]:
        assert flags == ["implausible"] and "voltage_l2" not in values
        assert values["voltage_l1"] == pytest.approx(SDM630_VALUES["voltage_l1"], rel=1e-6)
    assert "implausible" in log and "-3e+12" in log  # said, with the value
