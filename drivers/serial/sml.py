"""SML (Smart Message Language) meters: German eHZ/EDL meters push binary telegrams over an
IR head, usually 9600 8N1 every 1-4 s. Parsed with smllib.

Transport v1 framing: `1b1b1b1b 01010101` starts a file, `1b1b1b1b 1a NN CRC CRC` ends it (NN
fill bytes, CRC16 over everything before the CRC); a literal `1b1b1b1b` in the data is doubled.
This module frames the byte stream itself (so a file cut short by the next start sequence is
counted and dropped, and the next one is kept), then hands each complete file to smllib, which
checks the CRC, undoes the escaping and decodes the messages. Values are integers of 1 to 8
bytes, signed or not, times 10**scaler; they are scaled exactly (Decimal) and mapped to
channels through the OBIS map like D0 and P1 readings.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final, Unpack

from smllib.errors import CrcError, SmlLibException
from smllib.reader import SmlStreamReader
from smllib.sml.list_entry import SmlListEntry
from smllib.sml.response_get_list import SmlGetListResponse

from drivers.base import MeterReadError
from drivers.config import MeterConfig
from drivers.registry import BuildOptions
from drivers.serial.config import SmlBusConfig
from drivers.serial.framing import StartSyncedFramer
from drivers.serial.lines import (
    FrameProblem,
    ObisReader,
    PushLine,
    PushTiming,
    Telegram,
    obis_map_for,
)
from drivers.serial.obis_map import Quantity, normal_code
from drivers.serial.transport import SerialPort

ESCAPE: Final = b"\x1b\x1b\x1b\x1b"
START: Final = ESCAPE + b"\x01\x01\x01\x01"
#: A file longer than this without its end is not a telegram (real ones are < 1 KiB).
MAX_FILE_BYTES: Final = 16 * 1024

#: DLMS unit codes (IEC 62056-62) -> the unit names drivers.serial.obis_map converts.
SML_UNITS: Final[dict[int, str]] = {
    13: "m3",
    14: "m3",
    27: "W",
    28: "VA",
    29: "var",
    30: "Wh",
    32: "varh",
    33: "A",
    35: "V",
    44: "Hz",
}

#: What a parse of hostile bytes may raise inside smllib (none of it escapes this module).
_PARSE_ERRORS: Final = (
    SmlLibException,
    ValueError,
    IndexError,
    TypeError,
    KeyError,
    AttributeError,
)


class SmlFramer(StartSyncedFramer):
    """Bytes -> complete SML transport-v1 files (start .. end with CRC), escapes honoured."""

    def feed(self, data: bytes) -> list[bytes | FrameProblem]:
        self._buffer += data
        found: list[bytes | FrameProblem] = []
        buffer = self._buffer
        while True:
            start = buffer.find(START)
            if start < 0:
                keep = len(ESCAPE) + 3  # a start sequence may be arriving
                if len(buffer) > keep:
                    self._skipped(found, len(buffer) - keep, "outside a telegram")
                    del buffer[:-keep]
                return found
            if start > 0:
                self._skipped(found, start, "before a telegram")
                del buffer[:start]
            self._at_start(found)
            end = self._end(buffer)
            if end is None:
                if len(buffer) > MAX_FILE_BYTES:
                    found.append(FrameProblem("garbage", "no end of SML file within 16 KiB"))
                    del buffer[: len(START)]
                return found
            if end < 0:  # a new start (or a broken escape) before the end: cut short
                found.append(FrameProblem("truncated", "SML file cut short"))
                del buffer[:-end]
                continue
            found.append(bytes(buffer[:end]))
            del buffer[:end]

    def _skipped(self, found: list[bytes | FrameProblem], count: int, where: str) -> None:
        if self._synced:
            self._garbage += count

    @staticmethod
    def _end(buffer: bytearray) -> int | None:
        """Index after the end sequence; None: not complete yet; -n: damaged, resync at n."""
        position = len(START)
        while True:
            escape = buffer.find(ESCAPE, position)
            if escape < 0 or len(buffer) < escape + 8:
                return None
            tail = buffer[escape + 4 : escape + 8]
            if tail == ESCAPE:
                position = escape + 8
            elif tail[0] == 0x1A:
                return escape + 8
            elif tail == START[4:]:
                return -escape
            else:
                return -(escape + 4)


def decode_file(raw: bytes, crc: str = "x25") -> Telegram:
    """One framed SML file -> readings; MeterReadError (crc | garbage) when damaged."""
    reader = SmlStreamReader(crc=crc)  # type: ignore[arg-type]
    reader.add(raw)
    try:
        frame = reader.get_frame()
    except CrcError as exc:
        raise MeterReadError(
            "crc", f"SML CRC mismatch (sent {exc.crc_msg:04x}, computed {exc.crc_calc:04x})"
        ) from None
    except _PARSE_ERRORS as exc:
        raise MeterReadError("garbage", f"SML file does not frame: {exc}") from None
    if frame is None:
        raise MeterReadError("garbage", "not a complete SML file")
    try:
        entries = [
            entry
            for message in frame.parse_frame()
            if isinstance(message.message_body, SmlGetListResponse)
            for entry in message.message_body.val_list or ()
        ]
    except _PARSE_ERRORS:
        # Some meters bend the message grammar; the CRC already vouches for the bytes, so
        # take the list entries smllib can find on their own.
        try:
            entries = frame.get_obis()
        except _PARSE_ERRORS as exc:
            raise MeterReadError("garbage", f"SML file does not parse: {exc}") from None
    return Telegram(readings=_readings(entries))


def _readings(entries: list[SmlListEntry]) -> dict[str, Quantity]:
    readings: dict[str, Quantity] = {}
    for entry in entries:
        value, scaler = entry.value, entry.scaler
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if scaler is not None and (isinstance(scaler, bool) or not isinstance(scaler, int)):
            continue
        code = normal_code(getattr(entry.obis, "obis_code", ""))
        if code is None:
            continue
        unit = SML_UNITS.get(entry.unit) if isinstance(entry.unit, int) else None
        readings[code] = Quantity(Decimal(value).scaleb(scaler or 0), unit)
    return readings


class SmlLine(PushLine):
    kind = "sml"

    def __init__(
        self,
        name: str,
        port: SerialPort,
        *,
        crc: str,
        **timing: Unpack[PushTiming],
    ) -> None:
        super().__init__(name, port, **timing)
        self.crc = crc

    @classmethod
    def from_config(cls, name: str, bus: object, **options: Unpack[BuildOptions]) -> SmlLine:
        assert isinstance(bus, SmlBusConfig)
        port, timing = cls.port_and_timing(name, bus, options)
        return cls(name, port, crc=bus.crc, **timing)

    def new_framer(self) -> SmlFramer:
        return SmlFramer()

    def decode(self, frame: bytes) -> Telegram:
        return decode_file(frame, self.crc)

    def reader(self, meter: MeterConfig) -> ObisReader:
        return ObisReader(meter.id, self, obis_map_for(meter))
