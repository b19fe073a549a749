"""Registers <-> values, per type, word order, byte order and scale (struct: fast, no magic).

Wire convention: a register is a 16-bit word. `word_order: big` means the first register holds
the most significant word (Modbus' usual layout); `byte_order: big` means the high byte of each
register comes first (Modbus' own rule; some devices swap it).

Scale factors (SunSpec style): a register with `scale_register` is multiplied by 10**v, v being
the s16 read from that register in the same pass (possibly in another request, hence
`decode_blocks`). Powers of ten are applied by exact division for negative v, so 2305 with
v = -1 decodes to exactly 230.5.

Garbage policy: a value that is not finite after decoding and scaling (a float32 NaN or
infinity, typically what a meter answers for a quantity it does not measure right now), a
register holding its map's `unavailable` sentinel ("not implemented"), or a scale factor that is
itself not implemented (0x8000) or outside SunSpec's -10..10 fails the whole read with
MeterReadError("garbage"), because a sample silently missing a required channel would reach
the clouds as a hole. A register marked `optional` only loses its channel.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from typing import Final

from drivers.base import MeterReadError
from drivers.modbus.planner import ReadRequest
from drivers.modbus.register_map import RegisterSpec, ScaleRegister, is_scale_factor

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
#: An s16 scale factor holding this means "not implemented" (SunSpec).
SCALE_FACTOR_NOT_IMPLEMENTED: Final = 0x8000
#: SunSpec's range for scale factors; anything else is a broken device, not a meter reading.
SCALE_FACTOR_RANGE: Final = range(-10, 11)


class GarbageValue(ValueError):
    """A register decoded to something no meter can mean (NaN, infinity, "not implemented")."""


def decode_value(words: Sequence[int], spec: RegisterSpec, exponent: int = 0) -> float:
    """The channel value held by `words` as read off the wire, scaled by `spec.scale` and by
    10**exponent (the value of its scale-factor register, if it has one)."""
    if len(words) != spec.words:
        raise ValueError(f"{spec.channel}: {spec.type} needs {spec.words} registers")
    data = _to_bytes(words, spec)
    if spec.unavailable is not None and int.from_bytes(data, "big") == spec.unavailable:
        raise GarbageValue(f"{spec.channel} at {spec.address} is not available on this device")
    raw = struct.unpack(_FORMATS[spec.type], data)[0]
    value = _times_power_of_ten(float(raw), exponent) * spec.scale
    if not math.isfinite(value):
        raise GarbageValue(f"{spec.channel} at {spec.address} reads {raw!r}")
    return value


def decode_scale_factor(word: int, where: str = "scale factor") -> int:
    """The exponent an s16 scale-factor register holds; GarbageValue if unusable."""
    if word == SCALE_FACTOR_NOT_IMPLEMENTED:
        raise GarbageValue(f"{where} is not implemented on this device")
    exponent = word - 0x10000 if word >= 0x8000 else word
    if exponent not in SCALE_FACTOR_RANGE:
        raise GarbageValue(f"{where} reads {exponent}, outside -10..10")
    return exponent


def encode_scale_factor(exponent: int) -> int:
    """The register a device holds for scale factor `exponent` (the simulator's side)."""
    if exponent not in SCALE_FACTOR_RANGE:
        raise ValueError(f"scale factor {exponent} is outside -10..10")
    return exponent & 0xFFFF


def encode_value(value: float, spec: RegisterSpec, exponent: int = 0) -> list[int]:
    """The registers a device holds for channel `value` (the simulator's side of decode)."""
    raw = _times_power_of_ten(value / spec.scale, -exponent)
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
    """Channel values from the registers one request returned (see the garbage policy).

    Only for plans whose values find their scale factors in the same request; a reader whose
    plan spans several requests decodes them together with `decode_blocks`.
    """
    return decode_blocks([(request, words)])


def decode_blocks(blocks: Iterable[tuple[ReadRequest, Sequence[int]]]) -> dict[str, float]:
    """Channel values from every (request, registers) pair of one read, scale factors applied.

    Scale-factor pseudo-registers (RegisterMap.registers_to_read) are consumed, not returned.
    A value whose scale-factor register was not read fails the read: the plan is wrong.
    """
    pairs = list(blocks)
    exponents: dict[ScaleRegister, int | GarbageValue] = {}
    for request, words in pairs:
        _check_length(request, words)
        for spec in request.registers:
            if is_scale_factor(spec):
                ref = ScaleRegister(address=spec.address, table=spec.table)
                word = words[spec.address - request.address]
                try:
                    exponents[ref] = decode_scale_factor(word, f"scale factor at {spec.address}")
                except GarbageValue as exc:
                    exponents[ref] = exc
    values: dict[str, float] = {}
    for request, words in pairs:
        for spec in request.registers:
            if is_scale_factor(spec):
                continue
            offset = spec.address - request.address
            try:
                exponent = _exponent_for(spec, exponents)
                values[spec.channel] = decode_value(
                    words[offset : offset + spec.words], spec, exponent
                )
            except GarbageValue as exc:
                if not spec.optional:
                    raise MeterReadError("garbage", str(exc)) from None
    return values


def _check_length(request: ReadRequest, words: Sequence[int]) -> None:
    if len(words) != request.count:
        raise MeterReadError(
            "garbage", f"asked for {request.count} registers at {request.address}, got {len(words)}"
        )


def _exponent_for(spec: RegisterSpec, exponents: dict[ScaleRegister, int | GarbageValue]) -> int:
    ref = spec.scale_register
    if ref is None:
        return 0
    if ref not in exponents:
        raise MeterReadError(
            "garbage",
            f"{spec.channel}: its scale factor ({ref.table} {ref.address}) was not read; plan "
            "reads with RegisterMap.registers_to_read() and decode them with decode_blocks()",
        )
    found = exponents[ref]
    if isinstance(found, GarbageValue):
        raise GarbageValue(f"{spec.channel}: {found}")
    return found


def _times_power_of_ten(value: float, exponent: int) -> float:
    """value x 10**exponent, exact where it can be (2305 x 10**-1 is 230.5, not 230.50000001)."""
    power: int = 10 ** abs(exponent)
    return value * power if exponent >= 0 else value / power


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
