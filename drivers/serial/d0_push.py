"""IEC 62056-21 (D0) push mode: optical meters that send their data block on their own, about
every second, without a sign-on (EasyMeter Q3D, Hager eHZ, many German eHZ/EDL meters in
their D0 setting). The gateway only listens: it frames each block and decodes it like a
readout's.

A block is the identification line `/XXXZ<ident>` (CR LF or LF), the data lines and `!`
with its line end, as a readout's data block. Some meters wrap the lines in STX .. ETX BCC
like a readout; then the BCC is checked as the meter's `bcc` says (strict by default). A
meter that sends STX but no ETX (an L+G E350 dump in vzlogger's tests) ends its block at `!`:
the framer knows that only when the next byte arrives (the next block), so such a block is
read one period late.

Invariants: those of PushLine (drivers.serial.lines): one task reads the port, the newest
complete block is kept, a damaged one (cut short by the next `/`, BCC, non-ASCII) is counted
and skipped, never half read. The line's BCC policy is the strictest of its meters'.
"""

from __future__ import annotations

import logging
from typing import Final, Unpack

from drivers.base import MeterReadError
from drivers.config import MeterConfig
from drivers.registry import BuildOptions
from drivers.serial.config import Iec62056BusConfig
from drivers.serial.framing import StartSyncedFramer
from drivers.serial.iec62056 import (
    ETX,
    STX,
    BccPolicy,
    Iec62056Line,
    bcc_problem,
    parse_data_block,
    parse_data_message,
    parse_identification,
)
from drivers.serial.lines import FrameProblem, ObisReader, PushLine, Telegram, obis_map_for
from drivers.serial.transport import SerialPort, port_for

log = logging.getLogger(__name__)

#: A block longer than this without its end is not a block (real ones are < 2 KiB).
MAX_BLOCK_BYTES: Final = 16 * 1024
#: How long the first read waits for a block when the bus sets no timeout_secs of its own.
DEFAULT_WAIT_SECS: Final = 5.0
_STRICTNESS: Final[dict[BccPolicy, int]] = {"off": 0, "warn": 1, "strict": 2}


class D0PushFramer(StartSyncedFramer):
    """Bytes -> complete data blocks (`/` .. `!` line end [ETX BCC]); problems reported."""

    FRAME_NAME = "blocks"

    def feed(self, data: bytes) -> list[bytes | FrameProblem]:
        self._buffer += data
        found: list[bytes | FrameProblem] = []
        buffer = self._buffer
        while buffer:
            start = buffer.find(b"/")
            if start < 0:
                self._skip(buffer)
                buffer.clear()
                break
            if start > 0:
                self._skip(buffer[:start])
                del buffer[:start]
            self._at_start(found)
            end = self._block_end(buffer, found)
            if end == 0:
                continue  # a problem was reported and the buffer moved on
            if end < 0:
                if len(buffer) > MAX_BLOCK_BYTES:
                    found.append(FrameProblem("garbage", "no end of data block within 16 KiB"))
                    buffer.clear()
                break
            found.append(bytes(buffer[:end]))
            del buffer[:end]
        return found

    def _block_end(self, buffer: bytearray, found: list[bytes | FrameProblem]) -> int:
        """Index after the block starting at 0; -1: not complete yet; 0: cut short."""
        head_end = buffer.find(b"\n")
        bang = buffer.find(b"!", head_end) if head_end >= 0 else -1
        restart = buffer.find(b"/", 1)
        if restart > 0 and (bang < 0 or restart < bang):
            found.append(FrameProblem("truncated", "data block cut short (a new one began)"))
            del buffer[:restart]
            return 0
        if bang < 0:
            return -1
        end = bang + 1
        rest = bytes(buffer[end : end + 2])
        if rest.startswith(b"\r\n"):
            end += 2
        elif rest.startswith(b"\n"):
            end += 1
        elif rest in (b"", b"\r"):
            return -1  # the line end is still on its way
        if STX in buffer[head_end:bang]:  # a framed block: ETX and BCC should follow
            if len(buffer) < end + 1 or (buffer[end] == ETX and len(buffer) < end + 2):
                return -1
            if buffer[end] == ETX:
                end += 2
        return end

    def _skip(self, data: bytearray) -> None:
        if self._synced and data.strip(b"\r\n\0 \x7f"):
            self._garbage += len(data)


def decode_block(frame: bytes, bcc_check: BccPolicy = "strict") -> tuple[Telegram, str | None]:
    """One framed block -> (readings, the BCC mismatch a non-strict policy let pass)."""
    head_end = frame.find(b"\n") + 1
    parse_identification(frame[:head_end])
    body = frame[head_end:]
    problem: str | None = None
    stx = body.find(bytes([STX]))
    if stx >= 0 and len(body) >= stx + 3 and body[-2] == ETX:
        message = body[stx:]
        problem = bcc_problem(message) if bcc_check != "off" else None
        if problem is not None and bcc_check == "strict":
            raise MeterReadError("bcc", problem)
        readings, _ = parse_data_message(message, bcc_check="off")
        return Telegram(readings=readings), problem
    try:
        text = body[stx + 1 :].decode("ascii")
    except UnicodeDecodeError:
        raise MeterReadError("garbage", "data block contains non-ASCII bytes") from None
    readings, _ = parse_data_block(text[: text.rfind("!")])
    return Telegram(readings=readings), None


class D0PushLine(PushLine):
    """A push-mode D0 meter on its optical head."""

    kind = "iec62056-21"

    def __init__(self, name: str, port: SerialPort, *, max_age_secs: float, wait_secs: float):
        super().__init__(name, port, max_age_secs=max_age_secs, wait_secs=wait_secs)
        self.bcc_check: BccPolicy = "off"
        self._warned = False

    @classmethod
    def from_config(
        cls, name: str, bus: Iec62056BusConfig, **options: Unpack[BuildOptions]
    ) -> D0PushLine:
        wait = options.get("timeout_secs") or bus.timeout_secs
        if "timeout_secs" not in bus.model_fields_set:
            wait = max(wait, DEFAULT_WAIT_SECS)  # a block comes every 1-2 s, not within 2 s
        port = port_for(name, bus, options.get("health"))
        return cls(name, port, max_age_secs=bus.max_telegram_age_secs, wait_secs=wait)

    def describe(self) -> str:
        return f"D0 push line {self.name} ({self.port.describe()})"

    def new_framer(self) -> D0PushFramer:
        return D0PushFramer()

    def decode(self, frame: bytes) -> Telegram:
        telegram, problem = decode_block(frame, self.bcc_check)
        if problem is not None:
            self.port.count("bcc_ignored")
            if not self._warned:
                self._warned = True
                log.warning("%s: %s; values taken anyway (bcc: warn)", self.name, problem)
        return telegram

    def reader(self, meter: MeterConfig) -> ObisReader:
        policy: BccPolicy = meter.bcc or "strict"
        if _STRICTNESS[policy] > _STRICTNESS[self.bcc_check]:
            self.bcc_check = policy
        return ObisReader(meter.id, self, obis_map_for(meter))


def build_line(
    name: str, bus: object, **options: Unpack[BuildOptions]
) -> Iec62056Line | D0PushLine:
    """A D0 bus's line: asked (readout mode) or listened to (push mode)."""
    assert isinstance(bus, Iec62056BusConfig)
    if bus.mode == "push":
        return D0PushLine.from_config(name, bus, **options)
    return Iec62056Line.from_config(name, bus, **options)
