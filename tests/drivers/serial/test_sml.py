"""SML: files from real meters and from an independent SML writer, over a pty pair."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.health import Health
from drivers.base import MeterReadError
from drivers.factory import open_readers
from drivers.serial.lines import FrameProblem
from drivers.serial.obis_map import default_map
from drivers.serial.sml import SmlFramer, decode_file
from gateway.config.schema import Config
from tests.fakes.serial_meters import PtyDevice
from tests.fakes.sml_encoder import HZ, WH, Entry, V, W, sml_file
from tests.fakes.telegrams import HOLLEY_SML, HOLLEY_VALUES
from tests.fixtures.socat import PtyPair

#: A DZG meter (smllib's test suite): energy in kWh resolution, i.e. Wh with scaler +3.
DZG_SML = bytes.fromhex(
    "1b1b1b1b0101010176051c414c02620062007263010176010102310b0a01445a47000282c0b07262016505471c"
    "2a620263f938007605 1d414c02620062007263070177010b0a01445a47000282c0b0070100620affff72620165"
    "05471c2a7477070100603201010172620162006200520004445a470177070100600100ff017262016200620052"
    "000b0a01445a47000282c0b00177070100010800ff641c01047262016200621e520363344f0177070100020800"
    "ff017262016200621e520362000101016393770076051e414c026200620072630201710163e6ba00000000001b"
    "1b1b1b1a04dad0".replace(" ", "")
)


def typical(power: int = -1234, energy: int = 123_456_789) -> bytes:
    """An eHZ-style file: import/export energy (0.1 Wh), signed power, voltage, frequency."""
    return sml_file(
        [
            Entry((1, 0, 1, 8, 0), energy, WH, -1, size=8),
            Entry((1, 0, 2, 8, 0), 5_000, WH, -1, size=8),
            Entry((1, 0, 16, 7, 0), power, W, 0, size=4, is_signed=True),
            Entry((1, 0, 32, 7, 0), 2304, V, -1, size=2),
            Entry((1, 0, 14, 7, 0), 5001, HZ, -2, size=2),
        ]
    )


TYPICAL_VALUES = {
    "energy_active_import": 12_345_678.9,
    "energy_active_export": 500.0,
    "power_active": -1234.0,
    "voltage_l1": 230.4,
    "frequency": 50.01,
}


def values_of(raw: bytes) -> dict[str, float]:
    values, problems = default_map().apply(decode_file(raw).readings)
    assert problems == []
    return values


def test_files_from_meters_in_the_field() -> None:
    assert values_of(HOLLEY_SML) == HOLLEY_VALUES
    assert values_of(DZG_SML) == {"energy_active_import": 13_391_000.0, "energy_active_export": 0.0}


@pytest.mark.parametrize("size", range(1, 9))
def test_signed_and_unsigned_values_of_every_length(size: int) -> None:
    low = -(2 ** (8 * size - 1))  # the most negative value of that width
    high = 2 ** (8 * size) - 1  # the largest unsigned one
    raw = sml_file(
        [
            Entry((1, 0, 16, 7, 0), low, W, 0, size=size, is_signed=True),
            Entry((1, 0, 1, 8, 0), high, WH, -1, size=size),
            Entry((1, 0, 36, 7, 0), -1, W, 0, size=size, is_signed=True),
        ]
    )
    values = values_of(raw)
    assert values["power_active"] == float(low)
    assert values["energy_active_import"] == float(high) / 10
    assert values["power_active_l1"] == -1.0


def test_an_escaped_start_sequence_inside_the_data_is_not_a_new_telegram() -> None:
    raw = sml_file(
        [Entry((1, 0, 1, 8, 0), 0x1B1B1B1B, WH, 0, size=4)],
        server_id=b"\x1b\x1b\x1b\x1b\x01\x01\x01\x01",
    )
    framer = SmlFramer()
    assert framer.feed(raw) == [raw]
    assert values_of(raw) == {"energy_active_import": float(0x1B1B1B1B)}


def test_a_damaged_file_fails_its_crc() -> None:
    raw = bytearray(typical())
    raw[60] ^= 0x04
    with pytest.raises(MeterReadError) as caught:
        decode_file(bytes(raw))
    assert caught.value.kind == "crc"


def test_the_framer_resynchronises_and_counts_what_it_throws_away() -> None:
    good = typical()
    stream = good[40:] + good[:70] + good + b"\x00noise\xff" + good
    framer = SmlFramer()
    out: list[bytes | FrameProblem] = []
    for i in range(0, len(stream), 5):
        out += framer.feed(stream[i : i + 5])
    assert [o for o in out if isinstance(o, bytes)] == [good, good]
    # joined mid-file (no error), then a file cut short by the next start, then noise
    assert [o.kind for o in out if isinstance(o, FrameProblem)] == ["truncated", "garbage"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_random_bytes_never_raise_anything_but_our_error(data: bytes) -> None:
    for frame in SmlFramer().feed(data):
        if isinstance(frame, bytes):
            with contextlib.suppress(MeterReadError):
                decode_file(frame)
    with contextlib.suppress(MeterReadError):
        decode_file(data)
    with contextlib.suppress(MeterReadError):
        decode_file(
            b"\x1b\x1b\x1b\x1b\x01\x01\x01\x01" + data + b"\x1b\x1b\x1b\x1b\x1a\x00\x00\x00"
        )


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_files_give_the_right_values_or_our_error(data: st.DataObject) -> None:
    raw = data.draw(st.sampled_from([HOLLEY_SML, typical()]))
    expected = values_of(raw)
    mutated = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(raw) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    try:
        values, _ = default_map().apply(decode_file(bytes(mutated)).readings)
    except MeterReadError:
        return
    assert values == expected  # only a mutation that changed nothing gets through


# --- a meter on a pty ---------------------------------------------------------------------


def sml_config(port: str, **bus: Any) -> Config:
    return Config.model_validate(
        {
            "gateway": {"id": "site-1"},
            "buses": {"ir": {"type": "sml", "port": port, **bus}},
            "meters": [{"id": "ehz", "bus": "ir", "interval": 1}],
        }
    )


@pytest.fixture
async def pty(tmp_path: Path) -> AsyncIterator[PtyPair]:
    async with PtyPair(tmp_path) as pair:
        yield pair


async def test_an_ir_head_delivers_the_newest_good_file(pty: PtyPair) -> None:
    health = Health()
    config = sml_config(pty.gateway, max_telegram_age_secs=0.5, timeout_secs=0.5)
    async with PtyDevice(pty.device) as meter, open_readers(config, health=health) as readers:
        ehz = readers["ehz"]
        reading = asyncio.create_task(ehz.read())
        await asyncio.sleep(0.05)
        await meter.write(typical()[30:])  # the head starts mid-file: not an error
        await meter.write(typical(), chunk=16, pause=0.005)
        assert await reading == TYPICAL_VALUES
        damaged = bytearray(typical(power=5000))
        damaged[80] ^= 0x10
        await meter.write(bytes(damaged))
        await meter.write(typical(power=777)[:90])  # cut short by the next file
        await meter.write(typical(power=-42))
        await asyncio.sleep(0.1)
        assert (await ehz.read())["power_active"] == -42.0
        await asyncio.sleep(0.6)
        started = time.monotonic()
        with pytest.raises(MeterReadError) as caught:
            await ehz.read()
        assert caught.value.kind == "stale"
        assert time.monotonic() - started < 0.8
    bus = health.buses["ir"]
    # the silence at the end also counts: the port is re-opened after max_telegram_age_secs
    assert dict(bus.errors) == {"crc": 1, "truncated": 1, "timeout": 1}
    assert bus.transactions == 2
