"""Registers <-> values, per type, word order, byte order and scale (struct: fast, no magic).

Wire convention: a register is a 16-bit word. `word_order: big` means the first register holds
the most significant word (Modbus' usual layout); `byte_order: big` means the high byte of each
register comes first (Modbus' own rule; some devices swap it).

Garbage policy: a value that is not finite after decoding and scaling (a float32 NaN or
infinity, typically what a meter answers for a quantity it does not measure right now) fails
the whole read with MeterReadError("garbage"), because a sample silently missing a required
channel would reach the clouds as a hole. A register marked `optional` only loses its channel.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Final

from drivers.base import MeterReadError
from drivers.planner import ReadRequest
from drivers.register_map import RegisterSpec

_FORMATS: Final[dict[str, str]] = {
    "u16": ">H",
    "s16": ">h",
    "u32": ">I",
    "s32": ">i",
    "u64": ">Q",
    "s64": ">q",
    "f32": ">f",
    "f64": ">d",
}
_INTEGER_BOUNDS: Final[dict[str, tuple[int, int]]] = {
    "u16": (0, 2**16 - 1),
    "s16": (-(2**15), 2**15 - 1),
    "u32": (0, 2**32 - 1),
    "s32": (-(2**31), 2**31 - 1),
    "u64": (0, 2**64 - 1),
    "s64": (-(2**63), 2**63 - 1),
}


class GarbageValue(ValueError):
    """A register decoded to something no meter can mean (NaN, infinity)."""


def decode_value(words: Sequence[int], spec: RegisterSpec) -> float:
    """The channel value (already scaled) held by `words`, as read off the wire."""
    if len(words) != spec.words:
        raise ValueError(f"{spec.channel}: {spec.type} needs {spec.words} registers")
    raw = struct.unpack(_FORMATS[spec.type], _to_bytes(words, spec))[0]
    value = float(raw) * spec.scale
    if not math.isfinite(value):
        raise GarbageValue(f"{spec.channel} at {spec.address} reads {raw!r}")
    return value


def encode_value(value: float, spec: RegisterSpec) -> list[int]:
    """The registers a device holds for channel `value` (the simulator's side of decode)."""
    raw = value / spec.scale
    if spec.type in _INTEGER_BOUNDS:
        if not math.isfinite(raw):
            raise ValueError(f"{spec.channel}: {value!r} cannot be stored as {spec.type}")
        number = round(raw)
        low, high = _INTEGER_BOUNDS[spec.type]
        if not low <= number <= high:
            raise ValueError(f"{spec.channel}: {value!r} does not fit a {spec.type}")
        data = struct.pack(_FORMATS[spec.type], number)
    else:
        try:
            data = struct.pack(_FORMATS[spec.type], raw)
        except OverflowError as exc:
            raise ValueError(f"{spec.channel}: {value!r} does not fit a {spec.type}") from exc
    return _from_bytes(data, spec)


def decode_block(request: ReadRequest, words: Sequence[int]) -> dict[str, float]:
    """Channel values from the registers one request returned (see the garbage policy)."""
    if len(words) != request.count:
        raise MeterReadError(
            "garbage", f"asked for {request.count} registers at {request.address}, got {len(words)}"
        )
    values: dict[str, float] = {}
    for spec in request.registers:
        offset = spec.address - request.address
        try:
            values[spec.channel] = decode_value(words[offset : offset + spec.words], spec)
        except GarbageValue as exc:
            if not spec.optional:
                raise MeterReadError("garbage", str(exc)) from None
    return values


def _to_bytes(words: Sequence[int], spec: RegisterSpec) -> bytes:
    ordered = words if spec.word_order == "big" else list(reversed(words))
    data = b"".join(word.to_bytes(2, "big") for word in ordered)
    return data if spec.byte_order == "big" else _swap_bytes(data)


def _from_bytes(data: bytes, spec: RegisterSpec) -> list[int]:
    if spec.byte_order == "little":
        data = _swap_bytes(data)
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words if spec.word_order == "big" else list(reversed(words))


def _swap_bytes(data: bytes) -> bytes:
    swapped = bytearray(data)
    swapped[0::2], swapped[1::2] = data[1::2], data[0::2]
    return bytes(swapped)
