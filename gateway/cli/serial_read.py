"""`meter-gateway read METER` for D0, DSMR P1 and SML meters.

Same contract as gateway.cli.commissioning.read_meter (a channel / value / unit table on stdout,
the problem on stderr, exit 0 / 1 / 2) and the same readers as the daemon, through the common
MeterReader. `--raw` adds every OBIS code the meter sent, with its value and unit as printed:
what an installer needs to write `obis:` overrides.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import TextIO

from core.channels import CHANNEL_UNITS
from drivers.base import MeterReadError
from drivers.config import MeterConfig
from drivers.factory import build_bus, build_reader, bus_timeout
from drivers.serial.iec62056 import Iec62056Reader
from drivers.serial.lines import PushLine, SerialLine
from drivers.serial.obis_map import Quantity
from drivers.stamped import read_with_time
from gateway.cli.tables import render_table
from gateway.config.schema import Config

EXIT_OK = 0
EXIT_DEVICE = 1

_HINTS = {
    "connection": (
        " (is the optical head or P1 cable plugged in, the service user in the dialout group, "
        "and the gateway service stopped? It holds the port)"
    ),
    "stale": " (no complete telegram: P1 port enabled, right dsmr_version, baud rate and parity?)",
    "timeout": " (no answer: optical head seated on the meter's LED, right address and rate?)",
    "crc": " (damaged telegrams: check the cable, and the baud rate and parity)",
    "bcc": " (damaged readout: check the head's position and the line settings)",
}


async def read_serial_meter(
    config: Config, meter: MeterConfig, *, raw: bool = False, out: TextIO = sys.stdout
) -> int:
    """One read of a serial meter, printed; the exit code says whether the device answered."""
    bus_config = config.buses[meter.bus]
    # Wait long enough for a push meter's first telegram (DSMR 4 sends one every 10 s).
    wait = max(bus_timeout(config, meter.bus), getattr(bus_config, "max_telegram_age_secs", 0))
    started = time.monotonic()
    async with build_bus(meter.bus, bus_config, timeout_secs=wait) as line:
        assert isinstance(line, SerialLine)
        reader = build_reader(meter, line, bus_config)
        measured_ms: int | None = None
        try:
            values, measured_ms = await read_with_time(reader)
        except MeterReadError as exc:
            hint = _HINTS.get(exc.kind, "")
            print(f"error: meter {meter.id}: {exc.kind}: {exc}{hint}", file=sys.stderr)
            return EXIT_DEVICE
        elapsed = time.monotonic() - started
        codes = _raw_readings(line, reader)
    header = f"{meter.id}: {line.describe()}: {len(values)} value(s) in {elapsed * 1000:.0f} ms"
    if measured_ms is not None:
        when = datetime.fromtimestamp(measured_ms / 1000, tz=UTC).isoformat()
        header += f", measured by the meter at {when}"
    print(header, file=out)
    rows = [[c, _format(v), CHANNEL_UNITS.get(c, "")] for c, v in values.items()]
    print(render_table(["channel", "value", "unit"], rows), file=out)
    if raw and codes:
        print("", file=out)
        raw_rows = [[code, str(q.value), q.unit or ""] for code, q in sorted(codes.items())]
        print(render_table(["obis", "value", "unit"], raw_rows), file=out)
    return EXIT_OK


def _format(value: float) -> str:
    """Every digit the meter sent (readings are decimal, not float32 like Modbus registers)."""
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:.12g}"


def _raw_readings(line: SerialLine, reader: object) -> dict[str, Quantity]:
    """The OBIS codes behind the last reading (M-Bus devices as 0-n:24.2.1)."""
    if isinstance(reader, Iec62056Reader) and reader.last_readout is not None:
        return dict(reader.last_readout.readings)
    if isinstance(line, PushLine) and line.latest_telegram is not None:
        telegram = line.latest_telegram
        codes = dict(telegram.readings)
        for channel, mbus in telegram.mbus.items():
            codes[f"0-{channel}:24.2.1"] = mbus.quantity
        return codes
    return {}
