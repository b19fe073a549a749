"""DSMR P1 (Dutch, Belgian e-MUCS, Luxembourg, Swedish, Hungarian, Irish, Austrian smart meters,
EasyMeter Q3D), parsed with dsmr-parser.

The meter pushes a telegram every 1 s (DSMR 5) or 10 s (older): `/XXX5<ident>` CR LF, lines
`A-B:C.D.E(value*unit)`, `!` and, from DSMR 4 on, a CRC16 (CRC-16/ARC over `/` .. `!`) in hex,
1 to 4 digits (some meters, e.g. the NWA warmtelink heat meter, do not pad it; dsmr-parser
accepts that too). Encrypted flavours (Luxembourg Smarty with a key, Austrian Sagemcom T210-D)
send each telegram as a DLMS general-global-cipher APDU (AES-128-GCM): framed by its length
field, decrypted by dsmr-parser with the meter's own key, then read like a plain telegram.
This module frames the byte stream (a `/` before the end of the previous telegram means that
one was cut short: counted, dropped, resynchronised), lets dsmr-parser verify the CRC and parse
the lines of the configured DSMR version, and turns the result into OBIS readings plus one
reading per M-Bus channel (gas, water, heat) with the time the telegram gives it.

DSMR 2.2 and 3 telegrams have no CRC: every line must at least have the shape of an OBIS line,
so a telegram garbled on the wire is dropped rather than half believed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any, Final, Unpack

from dlms_cosem.exceptions import CryptographyError
from dsmr_parser import obis_references, telegram_specifications
from dsmr_parser.clients.telegram_buffer import EncryptedTelegramBuffer
from dsmr_parser.exceptions import DecryptionError, InvalidChecksumError, ParseError
from dsmr_parser.objects import CosemObject, MBusObject
from dsmr_parser.parsers import CosemParser, TelegramParser, ValueParser

from drivers.base import MeterReadError
from drivers.config import MeterConfig
from drivers.registry import BuildOptions
from drivers.serial.config import (
    ENCRYPTED_VERSIONS,
    MEDIUM_CHANNELS,
    MEDIUM_DEVICE_TYPES,
    DsmrP1BusConfig,
)
from drivers.serial.framing import StartSyncedFramer
from drivers.serial.lines import (
    FrameProblem,
    MbusReading,
    ObisReader,
    PushLine,
    PushTiming,
    Telegram,
    obis_map_for,
)
from drivers.serial.obis_map import Quantity, convert
from drivers.serial.transport import SerialPort
from drivers.stamped import StampedReading

log = logging.getLogger(__name__)

#: A telegram longer than this without its end is not a telegram (real ones are < 3 KiB).
MAX_TELEGRAM_BYTES: Final = 16 * 1024


def _with_values(specification: dict[str, Any], *references: str) -> dict[str, Any]:
    """A copy of `specification` that also reads these single-value registers (dsmr-parser's
    own table for the flavour leaves out values its meters do send)."""
    copy = dict(specification)
    present = {item["obis_reference"] for item in specification["objects"]}
    extra = [
        {
            "obis_reference": reference,
            "value_parser": CosemParser(ValueParser(Decimal)),
            "value_name": f"EXTRA_{index}",
        }
        for index, reference in enumerate(references)
        if reference not in present
    ]
    copy["objects"] = [*specification["objects"], *extra]
    return copy


def _plain(specification: dict[str, Any]) -> dict[str, Any]:
    return {**specification, "general_global_cipher": False}


#: The Luxembourg Smarty's table (Luxmetering P1 spec, dsmr-parser's MSN) has the reactive
#: energy and power totals and per phase that dsmr-parser's plain 5L table drops.
_SMARTY: Final = telegram_specifications.MSN
#: The Swedish table lacks total reactive power (3.7.0/4.7.0), which Swedish meters send.
_SWEDEN: Final = _with_values(
    telegram_specifications.SWEDEN,
    obis_references.CURRENT_REACTIVE_IMPORTED,
    obis_references.CURRENT_REACTIVE_EXPORTED,
)

#: DSMR version (flavour) -> dsmr-parser telegram specification, plain telegrams.
SPECIFICATIONS: Final[Mapping[str, dict[str, Any]]] = {
    "2.2": telegram_specifications.V2_2,
    "3": telegram_specifications.V3,
    "4": telegram_specifications.V4,
    "5": telegram_specifications.V5,
    "5B": telegram_specifications.BELGIUM_FLUVIUS,
    "5L": _plain(_SMARTY),
    "5S": _SWEDEN,
    "5EONHU": telegram_specifications.EON_HUNGARY,
    "ISKRA_IE": telegram_specifications.ISKRA_IE,
    "Q3D": telegram_specifications.Q3D,
}
#: Flavours whose telegrams come encrypted: the key decides (5L sends either).
ENCRYPTED_SPECIFICATIONS: Final[Mapping[str, dict[str, Any]]] = {
    "5L": _SMARTY,
    "SAGEMCOM_T210_D_R": telegram_specifications.SAGEMCOM_T210_D_R,
}
assert set(ENCRYPTED_SPECIFICATIONS) == set(ENCRYPTED_VERSIONS)

_END = re.compile(rb"!([0-9A-Fa-f]{1,4})?\r\n")
_END_PREFIX = re.compile(rb"![0-9A-Fa-f]{0,4}\r?$")
_LINE = re.compile(r"^(\d{1,3}-\d{1,3}:\d{1,3}\.\d{1,3}\.\d{1,3}(\*\d{1,3})?)?(\([^()\r\n]*\))+$")
_REFERENCE_CODE = re.compile(r":(?P<code>(?:\d+\\\.){2}\d+)\.\+\?")


class _QuietParserLog(logging.Filter):
    """dsmr-parser logs every line it cannot parse as an error (with a traceback); this
    driver counts damaged telegrams itself, so those records would only flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


logging.getLogger("dsmr_parser.parsers").addFilter(_QuietParserLog())


class P1Framer(StartSyncedFramer):
    """Bytes -> complete telegrams (`/` .. `!CRC` CR LF); problems are reported, not raised.
    Only non-blank bytes skipped count as garbage (a meter may pad with CR LF or NUL)."""

    def feed(self, data: bytes) -> list[bytes | FrameProblem]:
        self._buffer += data
        found: list[bytes | FrameProblem] = []
        buffer = self._buffer
        while buffer:
            start = buffer.find(b"/")
            if start < 0:
                self._skipped(found, buffer, "outside a telegram")
                buffer.clear()
                break
            if start > 0:
                self._skipped(found, buffer[:start], "before a telegram")
                del buffer[:start]
            self._at_start(found)
            restart = buffer.find(b"/", 1)
            bang = buffer.find(b"!", 1)
            if bang < 0 or (0 < restart < bang):
                if restart > 0:
                    found.append(FrameProblem("truncated", "telegram cut short (a new one began)"))
                    del buffer[:restart]
                    continue
                if len(buffer) > MAX_TELEGRAM_BYTES:
                    found.append(FrameProblem("garbage", "no end of telegram within 16 KiB"))
                    buffer.clear()
                break
            end = _END.match(buffer, bang)
            if end is None:
                if _END_PREFIX.match(buffer, bang) is not None:
                    break  # the CRC or CR LF is still on its way
                found.append(FrameProblem("truncated", "telegram end is damaged"))
                del buffer[: bang + 1]
                continue
            found.append(bytes(buffer[: end.end()]))
            del buffer[: end.end()]
        return found

    def _skipped(self, found: list[bytes | FrameProblem], data: bytearray, where: str) -> None:
        if self._synced and data.strip(b"\r\n\0 "):
            self._garbage += len(data)


@dataclass(frozen=True)
class _Spec:
    parser: TelegramParser
    checksum: bool
    #: value_name -> "C.D.E" for the objects that are single OBIS registers.
    codes: Mapping[str, str]


@dataclass(frozen=True)
class DsmrKeys:
    """An encrypted meter's keys, hex (32 digits each). Secrets: never logged or shown."""

    encryption: str
    #: None: the flavour's own (the Smarty's fixed public key), or for a meter whose
    #: authentication key is unknown, decrypt without checking the GCM tag (the CRC inside
    #: the telegram still guards it), as dsmr-parser does.
    authentication: str | None = None

    def __repr__(self) -> str:
        return "DsmrKeys(<hidden>)"


@cache
def _spec(version: str, encrypted: bool = False) -> _Spec:
    specification = (ENCRYPTED_SPECIFICATIONS if encrypted else SPECIFICATIONS)[version]
    codes: dict[str, str] = {}
    for item in specification["objects"]:
        match = _REFERENCE_CODE.search(item["obis_reference"])
        if match is not None:
            codes[item["value_name"]] = match["code"].replace("\\.", ".")
    return _Spec(
        TelegramParser(specification, apply_checksum_validation=True),
        bool(specification["checksum_support"]),
        codes,
    )


def telegram_codes(version: str) -> frozenset[str]:
    """The electricity OBIS codes ("1-0:C.D.E") a telegram of this DSMR version can carry;
    M-Bus readings (gas, water, heat) are separate (`Telegram.mbus`)."""
    encrypted = version not in SPECIFICATIONS
    return frozenset(f"1-0:{code}" for code in _spec(version, encrypted).codes.values())


_PARSE_ERRORS: Final = (
    ParseError,
    ValueError,
    ArithmeticError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
)


def decode_telegram(frame: bytes, version: str, keys: DsmrKeys | None = None) -> Telegram:
    """One framed telegram -> readings; MeterReadError (crc | garbage | decrypt) when it is
    damaged. With `keys` the frame is an encrypted APDU of an encrypted flavour."""
    if keys is not None:
        return _decode_encrypted(frame, version, keys)
    spec = _spec(version)
    try:
        text = frame.decode("ascii")
    except UnicodeDecodeError:
        raise MeterReadError("garbage", "telegram contains non-ASCII bytes") from None
    end = _END.search(frame)
    if not text.startswith("/") or "\n" not in text or end is None:
        raise MeterReadError("garbage", "not a telegram from '/' to '!'")
    if spec.checksum and end[1] is None:
        raise MeterReadError("crc", f"DSMR {version} telegram without its CRC")
    if not spec.checksum:
        _check_lines(text)
    try:
        parsed = spec.parser.parse(text)
    except InvalidChecksumError as exc:
        raise MeterReadError("crc", f"CRC mismatch: {exc}") from None
    except _PARSE_ERRORS as exc:
        raise MeterReadError("garbage", f"telegram does not parse: {exc}") from None
    return Telegram(readings=_readings(parsed, spec), mbus=_mbus(parsed))


def _decode_encrypted(frame: bytes, version: str, keys: DsmrKeys) -> Telegram:
    spec = _spec(version, encrypted=True)
    # "": dsmr-parser takes the flavour's own key; None: no tag check (Sagemcom without one)
    authentication = keys.authentication
    if authentication is None and version == "5L":
        authentication = ""
    try:
        parsed = spec.parser.parse(
            frame.hex(), encryption_key=keys.encryption, authentication_key=authentication
        )
    except DecryptionError:
        raise MeterReadError(
            "decrypt",
            "the telegram does not decrypt: check encryption_key (and authentication_key); "
            "a frame damaged on the wire fails the same way once",
        ) from None
    except InvalidChecksumError as exc:
        raise MeterReadError("crc", f"CRC mismatch in the decrypted telegram: {exc}") from None
    # a damaged security-control byte makes dlms-cosem raise NotImplementedError (a
    # RuntimeError): a byte changed on the wire, never a reason to stop reading the port
    except (*_PARSE_ERRORS, CryptographyError, LookupError, RuntimeError) as exc:
        raise MeterReadError("garbage", f"encrypted frame does not parse: {exc}") from None
    return Telegram(readings=_readings(parsed, spec), mbus=_mbus(parsed))


class GcmFramer:
    """Bytes -> DLMS general-global-cipher APDUs (tag 0xDB, system title, 2-byte length),
    with dsmr-parser's own buffer; a damaged frame shows as a frame that does not decrypt."""

    def __init__(self) -> None:
        self._buffer = EncryptedTelegramBuffer()

    def feed(self, data: bytes) -> list[bytes | FrameProblem]:
        self._buffer.append(data)
        return [bytes.fromhex(frame) for frame in self._buffer.get_all()]


def _check_lines(text: str) -> None:
    body = text[text.index("\n") + 1 : text.rindex("!")]
    for line in body.split("\r\n"):
        if line and _LINE.match(line) is None:
            raise MeterReadError("garbage", f"malformed line {line[:40]!r}")


def _readings(parsed: Any, spec: _Spec) -> dict[str, Quantity]:
    readings: dict[str, Quantity] = {}
    for name, item in parsed:
        code = spec.codes.get(name)
        if code is None or not isinstance(item, CosemObject | MBusObject) or item.is_mbus_reading:
            continue
        value, unit = item.value, item.unit
        if isinstance(value, bool) or not isinstance(value, Decimal | int):
            continue
        a, b = item.obis_id_code
        readings[f"{a}-{b}:{code}"] = Quantity(Decimal(value), unit or None)
    return readings


def _mbus(parsed: Any) -> dict[int, MbusReading]:
    result: dict[int, MbusReading] = {}
    for device in getattr(parsed, "MBUS_DEVICES", []):
        quantity: Quantity | None = None
        ts_ms: int | None = None
        device_type: int | None = None
        for name, item in device:
            if isinstance(item, MBusObject) and quantity is None:
                value, unit, when = item.value, item.unit, item.datetime
                if isinstance(value, Decimal | int) and not isinstance(value, bool):
                    quantity = Quantity(Decimal(value), unit or None)
                    ts_ms = round(when.timestamp() * 1000) if isinstance(when, datetime) else None
            elif name.endswith("DEVICE_TYPE") and isinstance(item, CosemObject):
                try:
                    device_type = int(item.value)
                except (TypeError, ValueError):
                    device_type = None
        if quantity is not None:
            result[device.channel_id] = MbusReading(device.channel_id, quantity, ts_ms, device_type)
    return result


class P1Line(PushLine):
    kind = "dsmr-p1"

    def __init__(
        self,
        name: str,
        port: SerialPort,
        *,
        version: str,
        keys: DsmrKeys | None = None,
        **timing: Unpack[PushTiming],
    ) -> None:
        super().__init__(name, port, **timing)
        self.version = version
        self._keys = keys

    @classmethod
    def from_config(cls, name: str, bus: object, **options: Unpack[BuildOptions]) -> P1Line:
        assert isinstance(bus, DsmrP1BusConfig)
        port, timing = cls.port_and_timing(name, bus, options)
        keys = None
        if bus.encryption_key is not None:
            authentication = bus.authentication_key
            keys = DsmrKeys(
                bus.encryption_key.get_secret_value(),
                None if authentication is None else authentication.get_secret_value(),
            )
        return cls(name, port, version=bus.dsmr_version, keys=keys, **timing)

    @property
    def encrypted(self) -> bool:
        return self._keys is not None

    def describe(self) -> str:
        how = ", encrypted" if self.encrypted else ""
        return f"DSMR {self.version} P1 line {self.name} ({self.port.describe()}{how})"

    def new_framer(self) -> P1Framer | GcmFramer:
        return GcmFramer() if self.encrypted else P1Framer()

    def decode(self, frame: bytes) -> Telegram:
        return decode_telegram(frame, self.version, self._keys)

    def reader(self, meter: MeterConfig) -> ObisReader | MbusReader:
        if meter.mbus_channel is not None:
            return MbusReader(meter.id, self, meter.mbus_channel, meter.medium or "gas")
        return ObisReader(meter.id, self, obis_map_for(meter))


class MbusReader:
    """A gas, water or heat meter behind a P1 meter: its value with the telegram's own time."""

    def __init__(self, meter_id: str, line: P1Line, channel: int, medium: str) -> None:
        self.meter_id = meter_id
        self.line = line
        self.channel = channel
        self.medium = medium

    async def read(self) -> dict[str, float]:
        return dict((await self.read_stamped()).values)

    async def read_stamped(self) -> StampedReading:
        telegram = await self.line.latest()
        reading = telegram.mbus.get(self.channel)
        if reading is None:
            present = ", ".join(str(c) for c in sorted(telegram.mbus)) or "none"
            raise MeterReadError(
                "missing", f"telegram has no M-Bus channel {self.channel} (present: {present})"
            )
        expected = MEDIUM_DEVICE_TYPES[self.medium]
        if reading.device_type is not None and reading.device_type not in expected:
            raise MeterReadError(
                "config",
                f"M-Bus channel {self.channel} is device type {reading.device_type}, "
                f"not a {self.medium} meter (set `medium:` to what it is)",
            )
        channel = MEDIUM_CHANNELS[self.medium]
        try:
            value = float(convert(reading.quantity, channel))
        except ValueError as exc:
            raise MeterReadError("garbage", f"M-Bus channel {self.channel}: {exc}") from None
        return StampedReading({channel: value}, reading.ts_ms)
