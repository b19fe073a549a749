"""Malformed telegrams on a serial line: P1 (DSMR), SML and D0 (IEC 62056-21).

The drivers' own tests throw random bytes at the decoders of ONE telegram. This file covers
what they do not: a never-ending stream, cut anywhere, mixing good telegrams, broken ones and
noise, fed to the framers that sit on the port. Whatever arrives: no exception, the framer's
buffer stays bounded (16 KiB plus what one read brought), and every frame it hands on decodes
or fails with our MeterReadError. D0 data blocks are fuzzed BEHIND a correct BCC, where the
block parser is reached (random bytes almost never pass the BCC).
"""

from __future__ import annotations

import itertools
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.base import MeterReadError
from drivers.serial.dsmr_p1 import MAX_TELEGRAM_BYTES, P1Framer, decode_telegram
from drivers.serial.iec62056 import ETX, STX, bcc, parse_data_message, parse_identification
from drivers.serial.lines import FrameProblem
from drivers.serial.sml import MAX_FILE_BYTES, SmlFramer, decode_file
from tests.fakes.telegrams import D0_BLOCK, DSMR5_EXAMPLE_BODY, HOLLEY_SML, dsmr5_example

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHUNK = 512


def _stream(good: bytes) -> st.SearchStrategy[bytes]:
    """Good telegrams, cut ones, damaged ones and noise, back to back."""
    piece = st.one_of(
        st.just(good),
        st.integers(1, len(good) - 1).map(lambda n: good[:n]),
        st.integers(1, len(good) - 1).map(lambda n: good[n:]),
        st.tuples(st.integers(0, len(good) - 1), st.integers(1, 255)).map(
            lambda f: good[: f[0]] + bytes([good[f[0]] ^ f[1]]) + good[f[0] + 1 :]
        ),
        st.binary(max_size=400),
        st.sampled_from([b"/", b"!", b"\x1b\x1b\x1b\x1b", b"\x1b\x1b\x1b\x1b\x01\x01\x01\x01"]),
    )
    return st.lists(piece, max_size=12).map(b"".join)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    pieces = [data[a:b] for a, b in itertools.pairwise(points)]
    return [p[i : i + CHUNK] for p in pieces for i in range(0, len(p), CHUNK)]


def _feed_all(framer: P1Framer | SmlFramer, chunks: list[bytes], limit: int) -> list[bytes]:
    frames: list[bytes] = []
    for chunk in chunks:
        for item in framer.feed(chunk):
            if isinstance(item, FrameProblem):
                assert item.kind in ("garbage", "truncated")
            else:
                frames.append(item)
        assert len(framer._buffer) <= limit + len(chunk), "the framer's buffer grew unbounded"
    return frames


@FUZZ
@given(_stream(dsmr5_example()), st.lists(st.integers(0, 10_000), max_size=20))
def test_a_p1_stream_of_anything_yields_good_telegrams_or_counted_problems(
    data: bytes, cuts: list[int]
) -> None:
    for frame in _feed_all(P1Framer(), _chunks(data, cuts), MAX_TELEGRAM_BYTES):
        try:
            telegram = decode_telegram(frame, "5")
        except MeterReadError:
            continue
        assert all(math.isfinite(q.value) for q in telegram.readings.values())


@FUZZ
@given(_stream(HOLLEY_SML), st.lists(st.integers(0, 10_000), max_size=20))
def test_an_sml_stream_of_anything_yields_good_files_or_counted_problems(
    data: bytes, cuts: list[int]
) -> None:
    for frame in _feed_all(SmlFramer(), _chunks(data, cuts), MAX_FILE_BYTES):
        try:
            telegram = decode_file(frame)
        except MeterReadError:
            continue
        assert all(math.isfinite(q.value) for q in telegram.readings.values())


def test_endless_noise_after_a_start_mark_never_grows_a_framer_past_its_limit() -> None:
    for framer, start, limit in (
        (P1Framer(), b"/", MAX_TELEGRAM_BYTES),
        (SmlFramer(), b"\x1b\x1b\x1b\x1b\x01\x01\x01\x01", MAX_FILE_BYTES),
    ):
        problems = _feed_all(framer, [start], limit)
        for _ in range(200):  # 200 KiB of a telegram that never ends
            problems += _feed_all(framer, [b"x" * 1024], limit)
        assert problems == []  # nothing ever passed as a telegram


def _with_bcc(block: bytes) -> bytes:
    body = block + b"!\r\n" + bytes([ETX])
    return bytes([STX]) + body + bytes([bcc(body)])


D0_LINE = st.one_of(
    st.sampled_from(D0_BLOCK.splitlines()),
    st.text(alphabet="0123456789.:*()-+,;/ kWhVAvar", max_size=60),
    st.text(max_size=40).map(lambda t: t.encode("ascii", "replace").decode()),
)


@FUZZ
@given(st.lists(D0_LINE, max_size=15))
def test_a_d0_block_with_a_valid_bcc_parses_or_fails_with_our_error(lines: list[str]) -> None:
    message = _with_bcc("\r\n".join(lines).encode("ascii"))
    try:
        readings, _ = parse_data_message(message)
    except MeterReadError:
        return
    assert all(math.isfinite(q.value) for q in readings.values())


@FUZZ
@given(st.binary(max_size=120))
def test_any_identification_line_parses_or_fails_with_our_error(line: bytes) -> None:
    try:
        parse_identification(line)
    except MeterReadError as exc:
        assert exc.kind == "garbage"


def test_the_fuzzed_streams_start_from_telegrams_the_decoders_accept() -> None:
    """The strategies above mutate GOOD telegrams: prove they are good."""
    assert decode_telegram(dsmr5_example(), "5").readings
    assert decode_file(HOLLEY_SML).readings
    assert parse_data_message(_with_bcc(D0_BLOCK.encode("ascii")))[0]
    assert DSMR5_EXAMPLE_BODY
