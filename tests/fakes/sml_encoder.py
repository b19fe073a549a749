"""A small SML (transport v1) writer, following the SML 1.04 specification: enough for a
simulated meter to send OpenResponse, GetListResponse with list entries of any integer width,
and CloseResponse. Independent of smllib, which the driver uses to read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ESCAPE = b"\x1b\x1b\x1b\x1b"
START = ESCAPE + b"\x01\x01\x01\x01"
NONE = b"\x01"

#: DLMS unit codes.
WH, W, V, A, HZ = 30, 27, 35, 33, 44


def crc16_x25(data: bytes) -> int:
    """CRC-16/X-25 (reflected 0x1021, init and xorout 0xFFFF), as SML uses it."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ 0xFFFF


def octets(value: bytes) -> bytes:
    assert len(value) < 15, "long octet strings are not needed here"
    return bytes([len(value) + 1]) + value


def unsigned(value: int, size: int) -> bytes:
    return bytes([0x60 | (size + 1)]) + value.to_bytes(size, "big", signed=False)


def signed(value: int, size: int) -> bytes:
    return bytes([0x50 | (size + 1)]) + value.to_bytes(size, "big", signed=True)


def sml_list(*items: bytes) -> bytes:
    return bytes([0x70 | len(items)]) + b"".join(items)


def obis(code: tuple[int, int, int, int, int], f: int = 255) -> bytes:
    return octets(bytes([*code, f]))


@dataclass(frozen=True)
class Entry:
    """One list entry: OBIS code, unit, scaler and an integer value encoded in `size` bytes."""

    code: tuple[int, int, int, int, int]
    value: int
    unit: int | None = None
    scaler: int | None = None
    size: int = 4
    is_signed: bool = False

    def encode(self) -> bytes:
        value = signed(self.value, self.size) if self.is_signed else unsigned(self.value, self.size)
        return sml_list(
            obis(self.code),
            NONE,  # status
            NONE,  # valTime
            NONE if self.unit is None else unsigned(self.unit, 1),
            NONE if self.scaler is None else signed(self.scaler, 1),
            value,
            NONE,  # valueSignature
        )


def message(transaction: bytes, tag: int, body: bytes) -> bytes:
    head = sml_list(
        octets(transaction),
        unsigned(0, 1),  # groupNo
        unsigned(0, 1),  # abortOnError
        sml_list(unsigned(tag, 2), body),
    )
    # The list header says 6 elements: the 4 above, the CRC and the end of message.
    head = bytes([0x76]) + head[1:]
    crc = crc16_x25(head)
    return head + unsigned(crc, 2) + b"\x00"


def sml_file(
    entries: Sequence[Entry], *, server_id: bytes = b"\x0a\x01EMH\x00\x01\x02\x03"
) -> bytes:
    """A complete SML file (start .. end with CRC) with one GetListResponse of `entries`."""
    opening = message(
        b"\x01",
        0x0101,
        sml_list(NONE, NONE, octets(b"\x05"), octets(server_id), NONE, NONE),
    )
    values = message(
        b"\x02",
        0x0701,
        sml_list(
            NONE,
            octets(server_id),
            NONE,
            NONE,
            sml_list(*(entry.encode() for entry in entries)),
            NONE,
            NONE,
        ),
    )
    closing = message(b"\x03", 0x0201, sml_list(NONE))
    payload = (opening + values + closing).replace(ESCAPE, ESCAPE + ESCAPE)
    padding = -len(payload) % 4
    body = START + payload + b"\x00" * padding + ESCAPE + bytes([0x1A, padding])
    crc = crc16_x25(body)
    return body + bytes([crc & 0xFF, crc >> 8])
