"""D0 (IEC 62056-21) against vzlogger's test data: real meters' bytes, read by our driver over
a socat pty pair, values compared with what vzlogger's tests assert (in our channels: Wh, W).

Source: github.com/volkszaehler/vzlogger tests/MeterD0.cpp (HagerEHZ_basic, HagerEHZ_waitsync,
LandisGyr_basic, ACE3000_basic, LuG_E350); the bytes are in tests/fakes/vzlogger_d0.py. The
EasyMeter Q3D block is dsmr-parser's (github.com/ndokter/dsmr_parser
test/example_telegrams.py, TELEGRAM_ESY5Q3DB1024_V304), read here as the D0 push meter it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config_errors import ConfigError
from core.health import Health
from drivers.base import MeterReadError
from drivers.factory import open_readers
from drivers.serial.d0_push import D0PushFramer, D0PushLine, decode_block
from drivers.serial.obis_map import default_map
from gateway.config.loader import parse_config
from gateway.config.schema import Config
from tests.fakes import dsmr_parser_telegrams as dp
from tests.fakes import vzlogger_d0 as vz
from tests.fakes.serial_meters import D0Meter, PtyDevice, bcc
from tests.fixtures.socat import PtyPair

E350_VALUES = {
    "energy_active_import": 219_252.0,
    "energy_active_import_t1": 0.0,
    "energy_active_import_t2": 219_251.0,
    "energy_active_export": 0.0,
    "energy_active_export_t1": 0.0,
    "energy_active_export_t2": 0.0,
    "voltage_l1": 233.0,
    "voltage_l2": 233.0,
    "voltage_l3": 234.0,
    "current_l1": 2.30,
    "current_l2": 2.32,
    "current_l3": 2.97,
    "power_active": 1660.0,
}


def d0_config(port: str, meter: dict[str, Any] | None = None, **bus: Any) -> Config:
    options = {"timeout_secs": 0.5, "readout_timeout_secs": 3.0, **bus}
    return Config.model_validate(
        {
            "gateway": {"id": "site-1"},
            "buses": {"d0": {"type": "iec62056-21", "port": port, **options}},
            "meters": [{"id": "main", "bus": "d0", **(meter or {})}],
        }
    )


@pytest.fixture
async def pty(tmp_path: Path) -> AsyncIterator[PtyPair]:
    async with PtyPair(tmp_path) as pair:
        yield pair


@pytest.fixture
async def device(pty: PtyPair) -> AsyncIterator[PtyDevice]:
    async with PtyDevice(pty.device) as end:
        yield end


def e350_parts() -> tuple[bytes, str]:
    """The E350's identification (with its LF LF) and the data lines between STX and `!`."""
    stx = vz.LUG_E350.index(b"\x02")
    return vz.LUG_E350[:stx], vz.LUG_E350[stx + 1 : vz.LUG_E350.rindex(b"!")].decode("ascii")


# --- defect 5: two-part codes, LF line ends -------------------------------------------------


async def test_an_e350_readout_with_two_part_codes_and_lf_line_ends(
    pty: PtyPair, device: PtyDevice
) -> None:
    identification, block = e350_parts()
    meter = D0Meter(device, identification, block)
    async with meter.running(), open_readers(d0_config(pty.gateway)) as readers:
        assert await readers["main"].read() == pytest.approx(E350_VALUES)
    assert meter.acks == [b"\x06040\r\n"]  # mode C, 4800 baud as the E350 offers


def test_two_part_codes_are_the_current_value_but_not_in_config(tmp_path: Path) -> None:
    telegram, _ = decode_block(vz.LUG_E350 + b"\r\n")
    assert telegram.readings["1-0:32.7.0"].value == 233
    assert telegram.readings["1-0:C.5.0"].value == 1420  # vzlogger's last value
    assert "1-0:F.F.0" not in telegram.readings  # the error register is no reading
    text = (
        "gateway: {id: s}\nbuses:\n  d0: {type: iec62056-21, port: /dev/null}\n"
        'meters:\n  - {id: m, bus: d0, obis: {"16.7": power_active}}\n'
    )
    with pytest.raises(ConfigError, match="is not a current-value OBIS code"):
        parse_config(text, str(tmp_path / "c.yaml"), {})


async def test_a_landis_gyr_readout_that_echoes_the_request(
    pty: PtyPair, device: PtyDevice
) -> None:
    meter = D0Meter(device, vz.LANDIS_GYR_IDENTIFICATION, vz.LANDIS_GYR_BLOCK, echo=True)
    async with meter.running(), open_readers(d0_config(pty.gateway)) as readers:
        values = await readers["main"].read()
    assert values["energy_active_import_t1"] == 1_846_000.0
    assert values["energy_active_import_t2"] == 0.0
    assert values["energy_active_export_t1"] == 4_329_600.0


# --- defect 6: a BCC some meters get wrong; values without a unit ---------------------------


def ace3000(device: PtyDevice) -> D0Meter:
    return D0Meter(
        device,
        vz.ACE3000_IDENTIFICATION,
        "",
        preamble=vz.ACE3000_PREAMBLE,
        message=vz.ACE3000_MESSAGE,
    )


async def test_an_ace3000_with_a_wrong_bcc_is_refused_by_default(
    pty: PtyPair, device: PtyDevice
) -> None:
    health = Health()
    async with (
        ace3000(device).running(),
        open_readers(d0_config(pty.gateway), health=health) as readers,
    ):
        with pytest.raises(MeterReadError) as caught:
            await readers["main"].read()
    assert caught.value.kind == "bcc"
    assert health.buses["d0"].errors == {"bcc": 1}


@pytest.mark.parametrize(("policy", "counted"), [("warn", {"bcc_ignored": 1}), ("off", {})])
async def test_bcc_warn_or_off_takes_the_ace3000s_unit_less_reading(
    pty: PtyPair,
    device: PtyDevice,
    policy: str,
    counted: dict[str, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    health = Health()
    config = d0_config(pty.gateway, {"bcc": policy})
    async with ace3000(device).running(), open_readers(config, health=health) as readers:
        # vzlogger: 13925.5; printed `(013925.5*)`, the unit is 1.8.0's standard kWh
        assert await readers["main"].read() == {"energy_active_import": 13_925_500.0}
    assert dict(health.buses["d0"].errors) == counted
    assert ("BCC mismatch" in caplog.text) == (policy == "warn")


def test_bcc_is_a_d0_meter_key_only(tmp_path: Path) -> None:
    text = (
        "gateway: {id: s}\nbuses:\n  p1: {type: dsmr-p1, port: /dev/null}\n"
        "meters:\n  - {id: m, bus: p1, bcc: warn}\n"
    )
    with pytest.raises(ConfigError, match=r"c\.yaml:5: .*bcc applies to iec62056-21"):
        parse_config(text, str(tmp_path / "c.yaml"), {})


# --- defect 7: push mode -------------------------------------------------------------------


async def test_a_hager_ehz_pushing_blocks_is_read_without_a_sign_on(
    pty: PtyPair, device: PtyDevice
) -> None:
    health = Health()
    config = d0_config(pty.gateway, mode="push", baudrate=9600)
    async with open_readers(config, health=health) as readers:
        main = readers["main"]
        assert isinstance(main.line, D0PushLine)  # type: ignore[attr-defined]
        reading = asyncio.create_task(main.read())
        await asyncio.sleep(0.1)
        await device.write(vz.HAGER_EHZ_MID_BLOCK + vz.HAGER_EHZ_BLOCKS[0], chunk=16, pause=0.005)
        assert await reading == pytest.approx({"energy_active_import": 1296.3})
        await device.write(vz.HAGER_EHZ_BLOCKS[1])
        await asyncio.sleep(0.2)
        assert await main.read() == pytest.approx({"power_active": 1296.4})
    assert device.received() == b""  # nothing was ever sent to the meter
    assert health.buses["d0"].transactions == 2 and not health.buses["d0"].errors


async def test_an_easymeter_q3d_and_an_e350_push_their_blocks(
    pty: PtyPair, device: PtyDevice
) -> None:
    health = Health()
    config = d0_config(pty.gateway, mode="push", baudrate=19200)  # no max_baudrate needed
    async with open_readers(config, health=health) as readers:
        reading = asyncio.create_task(readers["main"].read())
        await asyncio.sleep(0.1)
        await device.write(dp.Q3D)
        values = await reading
        assert values == pytest.approx(
            {
                "energy_active_import": 52_185_782.5309,
                "energy_active_export": 19_949_322.1493,
                "power_active": 2124.86,
                "power_active_l1": 747.85,
                "power_active_l2": 737.28,
                "power_active_l3": 639.73,
            }
        )
        # the E350 sends STX but no ETX: its block ends when the next one begins
        await device.write(vz.LUG_E350)
        await asyncio.sleep(0.1)
        await device.write(vz.LUG_E350[:10])
        await asyncio.sleep(0.2)
        assert await readers["main"].read() == pytest.approx(E350_VALUES)
    # the Q3D's two trailing lines and 0xFF fill are skipped and counted
    assert dict(health.buses["d0"].errors) == {"garbage": 1}


def framed(block: bytes, *, wrong: bool = False) -> bytes:
    head, lines = block.split(b"\r\n", 1)
    body = lines + b"\x03"
    return head + b"\r\n\x02" + body + bytes([bcc(body) ^ (0x55 if wrong else 0)])


@pytest.mark.parametrize("policy", ["strict", "warn", "off"])
def test_a_pushed_block_with_stx_etx_has_its_bcc_checked_as_the_meter_says(policy: str) -> None:
    good, bad = framed(vz.HAGER_EHZ_BLOCKS[0]), framed(vz.HAGER_EHZ_BLOCKS[0], wrong=True)
    assert D0PushFramer().feed(good + bad) == [good, bad]
    telegram, problem = decode_block(good, policy)  # type: ignore[arg-type]
    assert problem is None and "1-0:1.8.0" in telegram.readings
    if policy == "strict":
        with pytest.raises(MeterReadError) as caught:
            decode_block(bad, policy)
        assert caught.value.kind == "bcc"
        return
    telegram, problem = decode_block(bad, policy)  # type: ignore[arg-type]
    assert (problem is not None) == (policy == "warn")
    assert default_map().apply(telegram.readings)[0] == pytest.approx(
        {"energy_active_import": 1296.3}
    )


def test_a_block_cut_short_by_the_next_is_counted_never_half_read() -> None:
    framer = D0PushFramer()
    first = vz.HAGER_EHZ_BLOCKS[1]
    found = framer.feed(first[:40] + vz.HAGER_EHZ_BLOCKS[0])
    assert [getattr(f, "kind", f) for f in found] == ["truncated", vz.HAGER_EHZ_BLOCKS[0]]


def test_push_mode_takes_no_address(tmp_path: Path) -> None:
    text = (
        "gateway: {id: s}\nbuses:\n  d0: {type: iec62056-21, port: /dev/null, mode: push}\n"
        "meters:\n  - {id: m, bus: d0, address: '123'}\n"
    )
    with pytest.raises(ConfigError, match="address applies to readout mode"):
        parse_config(text, str(tmp_path / "c.yaml"), {})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["strict", "warn", "off"]))
def test_random_bytes_pushed_never_raise_anything_but_our_error(data: bytes, policy: str) -> None:
    framer = D0PushFramer()
    for item in framer.feed(b"/" + data) + framer.feed(vz.HAGER_EHZ_BLOCKS[0]):
        if isinstance(item, bytes):
            with contextlib.suppress(MeterReadError):
                decode_block(item, policy)  # type: ignore[arg-type]
