"""IEC 62056-21 (D0) readout: optical heads and RS-485 lines; the gateway asks, the meter answers.

The exchange, at the sign-on rate (300 baud 7E1):
    -> /?[address]! CR LF                   request
    <- /XXXZ<identification> CR LF          Z tells the mode and the meter's top rate
mode C (Z = 0..6):  -> ACK 0 Z' 0 CR LF     Z' = min(Z, max_baudrate); both switch to Z'
mode B (Z = A..I):  the meter switches to Z by itself, no acknowledgement
mode A (other Z):   no switch
    <- STX <data block> ! CR LF ETX BCC     BCC = XOR of every byte after STX up to ETX

Data lines hold data sets `1-0:1.8.0*255(001234.567*kWh)` (address, value, unit); only numeric
current values (no billing-period suffix) become readings, mapped through the OBIS map.

Invariants: one exchange at a time per line (an asyncio.Lock), each starts at the sign-on rate
with an empty input buffer, every wait is bounded (`timeout_secs` per silence, the whole
readout by `readout_timeout_secs`), a failed exchange ends with a break message (SOH B0 ETX) so
the meter returns to its idle state, a vanished port is re-opened by a later readout (with the
transport's backoff). A readout whose BCC does not match yields no value at all, unless the
meter's `bcc` is warn (values taken, mismatch counted as `bcc_ignored`, logged once per meter)
or off (not checked). Lines may end in CR LF or LF alone (an L+G E350 sends LF LF), bytes
before the identification's `/` (a head's noise, 0x7F from an ACE3000) are skipped.

Baud-rate fallback (mode C): some meters (or optical heads, or RS-485 converters) acknowledge
the switch and then say nothing intelligible at the new rate. A readout that fails after the
gateway switched rates makes the next `fast_retry_after` readouts of that meter acknowledge
the sign-on rate instead (ACK 0 Z 0 with Z = the sign-on rate's character: "no switch", as the
standard allows), so the meter is read slowly rather than not at all; after them the fast
rate is tried again (a flaky converter may have recovered). Where the standard is silent this
is our choice: the default, 10 readouts, is a 10-minute retry for a meter read every minute.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Final, Literal, Unpack

from drivers.base import MeterReadError
from drivers.config import MeterConfig
from drivers.registry import BuildOptions
from drivers.serial.config import Iec62056BusConfig
from drivers.serial.lines import SerialLine, map_values, obis_map_for
from drivers.serial.obis_map import ObisMap, Quantity, normal_code
from drivers.serial.transport import SerialLink, SerialPort, port_for

log = logging.getLogger(__name__)

SOH: Final = 0x01
STX: Final = 0x02
ETX: Final = 0x03
ACK: Final = 0x06
#: "Break": ends any exchange; the meter returns to waiting for a sign-on.
BREAK: Final = b"\x01B0\x03q"

#: Baud-rate characters of the identification message.
MODE_C_RATES: Final[dict[str, int]] = {
    "0": 300,
    "1": 600,
    "2": 1200,
    "3": 2400,
    "4": 4800,
    "5": 9600,
    "6": 19200,
}
MODE_B_RATES: Final[dict[str, int]] = {
    "A": 600,
    "B": 1200,
    "C": 2400,
    "D": 4800,
    "E": 9600,
    "F": 19200,
}
MAX_READOUT_BYTES: Final = 64 * 1024
#: Readouts at the sign-on rate after a failed switch before the fast rate is tried again.
DEFAULT_FAST_RETRY_AFTER: Final = 10

_IDENTIFICATION = re.compile(rb"^/(?P<maker>[A-Za-z]{3})(?P<z>[!-~])(?P<ident>[ -~]{0,64})\r?\n$")
#: What a readout whose BCC does not match is worth (a meter's `bcc` key).
BccPolicy = Literal["strict", "warn", "off"]
_DATA_SET = re.compile(
    r"(?P<address>[^()/!\r\n]*)\((?P<value>[^()*\r\n]*)(?:\*(?P<unit>[^()\r\n]*))?\)"
)
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")


@dataclass(frozen=True)
class Identification:
    manufacturer: str
    baud_char: str
    text: str

    @property
    def mode(self) -> str:
        if self.baud_char in MODE_C_RATES:
            return "C"
        if self.baud_char in MODE_B_RATES:
            return "B"
        return "A"

    def __str__(self) -> str:
        return f"/{self.manufacturer}{self.baud_char}{self.text}"


@dataclass(frozen=True)
class Readout:
    identification: Identification
    baudrate: int
    readings: dict[str, Quantity]
    #: Data block lines as received (for `meter-gateway read` and debugging).
    lines: list[str] = field(default_factory=list)
    #: The BCC mismatch a `bcc: warn` meter's readout was taken with (None: it matched).
    bcc_mismatch: str | None = None


def bcc(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


def parse_identification(line: bytes) -> Identification:
    start = line.find(b"/")
    match = _IDENTIFICATION.match(line[max(start, 0) :])
    if match is None:
        raise MeterReadError("garbage", f"not an identification message: {line[:40]!r}")
    return Identification(
        match["maker"].decode("ascii"), match["z"].decode("ascii"), match["ident"].decode("ascii")
    )


def bcc_problem(message: bytes) -> str | None:
    """What is wrong with the BCC of STX .. ETX BCC (None: it matches)."""
    computed = bcc(message[1:-1])
    if computed == message[-1]:
        return None
    return f"BCC mismatch (sent {message[-1]:02x}, computed {computed:02x})"


def parse_data_message(
    message: bytes, *, bcc_check: BccPolicy = "strict"
) -> tuple[dict[str, Quantity], list[str]]:
    """STX .. ETX BCC -> (readings, lines); MeterReadError on a bad shape, or on a bad BCC
    when `bcc_check` is strict (warn and off leave the BCC to the caller)."""
    if len(message) < 3 or message[0] != STX or message[-2] != ETX:
        raise MeterReadError("garbage", "data message does not run from STX to ETX BCC")
    if bcc_check == "strict" and (problem := bcc_problem(message)) is not None:
        raise MeterReadError("bcc", problem)
    try:
        text = message[1:-2].decode("ascii")
    except UnicodeDecodeError:
        raise MeterReadError("garbage", "data block contains non-ASCII bytes") from None
    end = text.rfind("!")
    if end < 0:
        raise MeterReadError("garbage", "data block has no end mark '!'")
    return parse_data_block(text[:end])


def parse_data_block(text: str) -> tuple[dict[str, Quantity], list[str]]:
    readings: dict[str, Quantity] = {}
    lines = [line for line in text.splitlines() if line]
    for line in lines:
        for match in _DATA_SET.finditer(line):
            address = match["address"].strip()
            if not address:
                continue  # a further value of the previous data set (e.g. its time stamp)
            code = normal_code(address, reduced=True)
            value = match["value"].strip()
            if code is None or code in readings or not _NUMBER.match(value):
                continue
            try:
                number = Decimal(value)
            except InvalidOperation:  # pragma: no cover - the pattern admits only numbers
                continue
            readings[code] = Quantity(number, (match["unit"] or "").strip() or None)
    return readings, lines


def _line_end(data: bytearray) -> int:
    index = data.find(b"\n")
    return -1 if index < 0 else index + 1


def _message_end(data: bytearray) -> int:
    """After ETX and its BCC, once STX has come (the meter's reaction may bring noise first)."""
    start = data.find(bytes([STX]))
    if start < 0:
        return -1
    etx = data.find(bytes([ETX]), start)
    return -1 if etx < 0 or len(data) < etx + 2 else etx + 2


class Iec62056Line(SerialLine):
    kind = "iec62056-21"

    def __init__(
        self,
        name: str,
        port: SerialPort,
        *,
        max_baudrate: int,
        timeout_secs: float,
        readout_timeout_secs: float,
        fast_retry_after: int = DEFAULT_FAST_RETRY_AFTER,
    ) -> None:
        super().__init__(name, port)
        self.sign_on_baudrate = port.settings.baudrate
        self.max_baudrate = max_baudrate
        self.timeout_secs = timeout_secs
        self.readout_timeout_secs = readout_timeout_secs
        self._turn = asyncio.Lock()
        #: The last exchange did not finish: the meter may still be talking.
        self._unfinished = False
        self.fast_retry_after = fast_retry_after
        #: Meter address -> readouts still to do at the sign-on rate (after a failed switch).
        self.slow_readouts: dict[str | None, int] = {}
        #: The rate the current exchange switched to (None: it stayed at the sign-on rate).
        self._switched: int | None = None

    @classmethod
    def from_config(cls, name: str, bus: object, **options: Unpack[BuildOptions]) -> Iec62056Line:
        assert isinstance(bus, Iec62056BusConfig)
        timeout_secs = options.get("timeout_secs") or bus.timeout_secs
        return cls(
            name,
            port_for(name, bus, options.get("health")),
            max_baudrate=bus.max_baudrate,
            timeout_secs=timeout_secs,
            readout_timeout_secs=bus.readout_timeout_secs,
            fast_retry_after=bus.fast_retry_after,
        )

    def reader(self, meter: MeterConfig) -> Iec62056Reader:
        return Iec62056Reader(
            meter.id, self, meter.address, obis_map_for(meter), meter.bcc or "strict"
        )

    async def readout(self, address: str | None = None, bcc_check: BccPolicy = "strict") -> Readout:
        """One complete readout of the meter at `address` (None: whichever answers)."""
        async with self._turn:
            link = await self.port.link()
            started = time.monotonic()
            self.health.transactions += 1
            finished = False
            self._switched = None
            try:
                async with asyncio.timeout(self.readout_timeout_secs):
                    if self._unfinished:
                        await self._await_silence(link)
                    readout = await self._exchange(link, address, bcc_check)
                finished = True
                self._count_slow_readout(address)
                return readout
            except TimeoutError:
                error = MeterReadError(
                    "timeout", f"readout not complete in {self.readout_timeout_secs:g}s"
                )
                self._note_failed_switch(address, error)
                await self._failed(link, error)
                raise error from None
            except MeterReadError as exc:
                self._note_failed_switch(address, exc)
                await self._failed(link, exc)
                raise
            finally:
                self._unfinished = not finished
                self.health.busy_s += time.monotonic() - started

    def _note_failed_switch(self, address: str | None, error: MeterReadError) -> None:
        """A readout that failed after we changed rates: read that meter slowly for a while."""
        if self._switched is None or error.kind == "connection" or self.fast_retry_after <= 0:
            return
        self.slow_readouts[address] = self.fast_retry_after
        log.warning(
            "%s: no readout at %d baud after the switch (%s); the next %d readout(s) of %s stay "
            "at %d baud",
            self.name,
            self._switched,
            error,
            self.fast_retry_after,
            address or "the meter",
            self.sign_on_baudrate,
        )

    def _count_slow_readout(self, address: str | None) -> None:
        left = self.slow_readouts.get(address)
        if left is None or self._switched is not None:
            return
        if left <= 1:
            del self.slow_readouts[address]  # the next readout tries the fast rate again
        else:
            self.slow_readouts[address] = left - 1

    async def _await_silence(self, link: SerialLink) -> None:
        """After a broken-off exchange (an error, or a read cancelled from outside), let the
        rest of the meter's answer pass so it is not taken for the next identification."""
        while True:
            try:
                await link.read(self.timeout_secs)
            except MeterReadError as exc:
                if exc.kind == "timeout":
                    return
                raise

    async def _failed(self, link: SerialLink, error: MeterReadError) -> None:
        self.port.count(error.kind, str(error))
        if error.kind == "connection" or link.lost is not None:
            await self.port.drop(str(error))
            return
        try:  # best effort: tell the meter the exchange is over
            await link.write(BREAK)
        except MeterReadError as exc:
            await self.port.drop(str(exc))

    async def _exchange(
        self, link: SerialLink, address: str | None, bcc_check: BccPolicy
    ) -> Readout:
        link.set_baudrate(self.sign_on_baudrate)
        link.discard_input()
        request = b"/?" + (address or "").encode("ascii") + b"!\r\n"
        await link.write(request)
        line = await self._read_line(link)
        if line[max(line.find(b"/"), 0) :] == request:  # an RS-485 adapter that hears itself
            line = await self._read_line(link)
        identification = parse_identification(line)
        baudrate = self.sign_on_baudrate
        if identification.mode == "C":
            char = self._mode_c_char(identification.baud_char)
            if address in self.slow_readouts:
                char = self._sign_on_char(char)
            await link.write(bytes([ACK]) + b"0" + char.encode("ascii") + b"0\r\n")
            baudrate = MODE_C_RATES[char]
        elif identification.mode == "B":
            baudrate = MODE_B_RATES[identification.baud_char]
        if baudrate != self.sign_on_baudrate:
            link.set_baudrate(baudrate)
            if identification.mode == "C":  # mode B switches by itself: nothing to negotiate
                self._switched = baudrate
        message = await link.read_until(
            _message_end,
            timeout_secs=self.timeout_secs,
            total_secs=self.readout_timeout_secs,
            limit=MAX_READOUT_BYTES,
        )
        message = message[message.find(bytes([STX])) :]
        problem = bcc_problem(message) if bcc_check != "off" else None
        if problem is not None:
            if bcc_check == "strict":
                raise MeterReadError("bcc", problem)
            self.port.count("bcc_ignored")
        readings, lines = parse_data_message(message, bcc_check="off")
        log.debug(
            "%s: read %s in mode %s at %d baud: %d value(s)",
            self.name,
            identification,
            identification.mode,
            baudrate,
            len(readings),
        )
        return Readout(identification, baudrate, readings, lines, bcc_mismatch=problem)

    async def _read_line(self, link: SerialLink) -> bytes:
        try:
            return await link.read_until(
                _line_end,
                timeout_secs=self.timeout_secs,
                total_secs=self.timeout_secs * 2,
                limit=256,
            )
        except MeterReadError as exc:
            if exc.kind == "timeout":
                raise MeterReadError(
                    "timeout", f"no identification from the meter ({exc}); check the head"
                ) from None
            raise

    def _sign_on_char(self, fallback: str) -> str:
        """The mode C character of the sign-on rate ("0" for 300 baud): "do not switch"."""
        for char, rate in MODE_C_RATES.items():
            if rate == self.sign_on_baudrate:
                return char
        return fallback  # a sign-on rate mode C cannot name: nothing slower to offer

    def _mode_c_char(self, offered: str) -> str:
        """The fastest rate both sides allow (the meter's offer, capped by max_baudrate)."""
        allowed = [c for c, rate in MODE_C_RATES.items() if rate <= self.max_baudrate]
        return min(offered, max(allowed))


class Iec62056Reader:
    """One D0 meter: a readout per read, values through the OBIS map."""

    def __init__(
        self,
        meter_id: str,
        line: Iec62056Line,
        address: str | None,
        obis: ObisMap,
        bcc_check: BccPolicy = "strict",
    ) -> None:
        self.meter_id = meter_id
        self.line = line
        self.address = address
        self.obis = obis
        self.bcc_check = bcc_check
        self.last_readout: Readout | None = None
        self._reported: set[str] = set()

    async def read(self) -> dict[str, float]:
        readout = await self.line.readout(self.address, self.bcc_check)
        self.last_readout = readout
        if readout.bcc_mismatch is not None and "bcc" not in self._reported:
            self._reported.add("bcc")
            log.warning(
                "meter %s: %s; values taken anyway (bcc: warn), counted as bcc_ignored",
                self.meter_id,
                readout.bcc_mismatch,
            )
        return map_values(self.meter_id, self.obis, readout.readings, self._reported)
