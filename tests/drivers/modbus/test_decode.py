"""Decoding registers into channel values: types, word and byte order, scale, garbage."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import MeterReadError
from drivers.modbus.decode import decode_block, decode_value, encode_value
from drivers.modbus.planner import ReadRequest
from drivers.modbus.register_map import RegisterSpec

INTEGER_RANGES = {
    "u16": (0, 2**16 - 1),
    "s16": (-(2**15), 2**15 - 1),
    "u32": (0, 2**32 - 1),
    "s32": (-(2**31), 2**31 - 1),
    "u64": (0, 2**53),  # beyond 2**53 a float (our channel value) is not exact
    "s64": (-(2**53), 2**53),
}
NAN32 = [0x7FC0, 0x0000]


def spec(type_: str = "f32", **extra: object) -> RegisterSpec:
    return RegisterSpec.model_validate(
        {"channel": "voltage_l1", "address": 0, "table": "input", "type": type_, **extra}
    )


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({}, [0x4366, 0x8000]),  # 230.5 as Eastron sends it
        ({"word_order": "little"}, [0x8000, 0x4366]),
        ({"byte_order": "little"}, [0x6643, 0x0080]),
        ({"word_order": "little", "byte_order": "little"}, [0x0080, 0x6643]),
    ],
)
def test_float32_in_each_word_and_byte_order(options: dict[str, str], words: list[int]) -> None:
    assert decode_value(words, spec("f32", **options)) == 230.5
    assert encode_value(230.5, spec("f32", **options)) == words


@pytest.mark.parametrize(
    ("type_", "words", "value"),
    [
        ("u16", [0xFFFF], 65535),
        ("s16", [0xFFFF], -1),
        ("u32", [0x0001, 0x0000], 65536),
        ("s32", [0xFFFF, 0xFFFE], -2),
        ("u64", [0, 0, 0x0001, 0x0000], 65536),
        ("s64", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], -1),
        ("f64", list(struct.unpack(">4H", struct.pack(">d", -0.1))), -0.1),
    ],
)
def test_known_encodings(type_: str, words: list[int], value: float) -> None:
    assert decode_value(words, spec(type_)) == value


def test_scale_turns_kwh_into_wh() -> None:
    energy = spec("f32", scale=1000, unit="kWh")
    assert decode_value(encode_value(12345.5 * 1000, energy), energy) == 12_345_500.0
    assert encode_value(12_345_500.0, energy) == encode_value(12345.5, spec("f32"))


def test_integer_with_fractional_scale() -> None:
    frequency = spec("u16", scale=0.01)
    assert encode_value(49.98, frequency) == [4998]
    assert decode_value([4998], frequency) == pytest.approx(49.98)


@given(
    st.sampled_from(sorted(INTEGER_RANGES)).flatmap(
        lambda t: st.tuples(st.just(t), st.integers(*INTEGER_RANGES[t]))
    ),
    st.sampled_from(["big", "little"]),
    st.sampled_from(["big", "little"]),
)
def test_integers_round_trip(typed: tuple[str, int], words: str, bytes_: str) -> None:
    type_, value = typed
    register = spec(type_, word_order=words, byte_order=bytes_)
    encoded = encode_value(value, register)
    assert len(encoded) == register.words and all(0 <= w <= 0xFFFF for w in encoded)
    assert decode_value(encoded, register) == value


@given(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.sampled_from(["big", "little"]),
    st.sampled_from(["big", "little"]),
)
def test_float32_round_trips(value: float, words: str, bytes_: str) -> None:
    register = spec("f32", word_order=words, byte_order=bytes_)
    assert decode_value(encode_value(value, register), register) == value


@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["big", "little"]))
def test_float64_round_trips(value: float, words: str) -> None:
    register = spec("f64", word_order=words)
    assert decode_value(encode_value(value, register), register) == value


def test_values_a_type_cannot_hold_are_refused_when_encoding() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode_value(70000, spec("u16"))
    with pytest.raises(ValueError, match="does not fit"):
        encode_value(1e39, spec("f32"))


def _request(*registers: RegisterSpec) -> ReadRequest:
    start = min(r.address for r in registers)
    end = max(r.end for r in registers)
    return ReadRequest("input", start, end - start, registers)


VOLTAGE = spec("f32")
CURRENT_N = RegisterSpec(channel="current_n", address=4, table="input", type="f32", optional=True)


def test_a_block_decodes_each_register_at_its_offset() -> None:
    words = [*encode_value(230.5, VOLTAGE), 0xDEAD, 0xBEEF, *encode_value(1.5, CURRENT_N)]
    assert decode_block(_request(VOLTAGE, CURRENT_N), words) == {
        "voltage_l1": 230.5,
        "current_n": 1.5,
    }


@pytest.mark.parametrize("garbage", [NAN32, [0x7F80, 0x0000], [0xFF80, 0x0000]])
def test_garbage_in_a_required_channel_fails_the_read(garbage: list[int]) -> None:
    words = [*garbage, 0, 0, *encode_value(1.5, CURRENT_N)]
    with pytest.raises(MeterReadError) as caught:
        decode_block(_request(VOLTAGE, CURRENT_N), words)
    assert caught.value.kind == "garbage"
    assert "voltage_l1" in str(caught.value)


def test_garbage_in_an_optional_channel_only_drops_that_channel() -> None:
    words = [*encode_value(230.5, VOLTAGE), 0, 0, *NAN32]
    assert decode_block(_request(VOLTAGE, CURRENT_N), words) == {"voltage_l1": 230.5}


def test_a_finite_value_that_overflows_after_scaling_is_garbage() -> None:
    huge = spec("f64", scale=1e300)
    words = list(struct.unpack(">4H", struct.pack(">d", 1e300)))
    with pytest.raises(MeterReadError) as caught:
        decode_block(_request(huge), words)
    assert caught.value.kind == "garbage"


def test_a_short_answer_is_garbage() -> None:
    with pytest.raises(MeterReadError) as caught:
        decode_block(_request(VOLTAGE, CURRENT_N), [0, 0, 0])
    assert caught.value.kind == "garbage"
