"""DSMR P1 against dsmr-parser's own test telegrams: every flavour it supports, read by our
driver, values compared with what its tests assert (in our channels and units).

Source: github.com/ndokter/dsmr_parser test/example_telegrams.py, test/test_parse_v5.py
(TELEGRAM_UNPADDED_CRC), test/test_parse_iskra_ie.py, test/test_parse_v5_eon_hungary.py,
test/test_parse_sagemcom_t210_d_r.py, test/test_parse_msn.py (encrypted frames: AES-128-GCM
general-global-cipher APDU, system title "SYSTEMID", invocation counter 0x10000001, the
Smarty's fixed authentication key 00112233445566778899AABBCCDDEEFF); the telegrams are in
tests/fakes/dsmr_parser_telegrams.py, which cites each. The frames are built here with
dlms-cosem's `encrypt` (dsmr-parser's own test helper does the same).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from dlms_cosem.security import SecurityControlField, encrypt
from hypothesis import given, settings
from hypothesis import strategies as st

from core.health import Health
from drivers.base import MeterReadError
from drivers.factory import open_readers
from drivers.serial.dsmr_p1 import DsmrKeys, GcmFramer, P1Framer, decode_telegram
from drivers.serial.obis_map import default_map
from gateway.config.loader import parse_config
from gateway.config.schema import Config
from tests.fakes import dsmr_parser_telegrams as dp
from tests.fakes.serial_meters import PtyDevice
from tests.fixtures.socat import PtyPair

#: dsmr-parser's test keys (dummies) and the Smarty's published authentication key.
ENCRYPTION_KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
SAGEMCOM_AUTH_KEY = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
SMARTY_AUTH_KEY = "00112233445566778899AABBCCDDEEFF"


def gcm_frame(plain: bytes, encryption_key: str, authentication_key: str) -> bytes:
    """A DLMS general-global-cipher APDU as a Smarty or Sagemcom T210-D sends it."""
    control = SecurityControlField(security_suite=0, authenticated=True, encrypted=True)
    title, counter = b"SYSTEMID", 0x10000001
    ciphered = encrypt(
        security_control=control,
        key=bytes.fromhex(encryption_key),
        auth_key=bytes.fromhex(authentication_key),
        system_title=title,
        invocation_counter=counter,
        plain_text=plain,
    )
    body = control.to_bytes() + counter.to_bytes(4, "big") + ciphered
    return bytes([0xDB, len(title)]) + title + b"\x82" + len(body).to_bytes(2, "big") + body


def values(frame: bytes, version: str, keys: DsmrKeys | None = None) -> dict[str, float]:
    found, problems = default_map().apply(decode_telegram(frame, version, keys).readings)
    assert problems == []
    return found


SMARTY_VALUES = {
    "energy_active_import": 273_764.0,
    "energy_active_export": 112_743_030.0,
    "energy_reactive_import": 462_590.0,
    "energy_reactive_export": 7_109_230.0,
    "power_active": -897.0,
    "power_reactive": -154.0,
    "power_reactive_l1": -46.0,
    "power_reactive_l2": -65.0,
    "power_reactive_l3": -41.0,
    "power_active_l1": -319.0,
    "power_active_l2": -300.0,
    "power_active_l3": -277.0,
    "voltage_l1": 231.0,
    "voltage_l2": 229.0,
    "voltage_l3": 230.0,
    "current_l1": 1.0,
    "current_l2": 1.0,
    "current_l3": 1.0,
}


# --- defect 1: a CRC of fewer than four digits ----------------------------------------------


def test_a_three_digit_crc_is_a_telegram_and_its_heat_reading_is_kept() -> None:
    framer = P1Framer()
    found = framer.feed(dp.UNPADDED_CRC)
    assert found == [dp.UNPADDED_CRC]
    heat = decode_telegram(dp.UNPADDED_CRC, "5").mbus[1]
    assert (heat.quantity.value, heat.quantity.unit, heat.device_type) == (
        Decimal("240.860"),
        "GJ",
        4,
    )


def test_a_short_crc_that_does_not_match_is_still_refused() -> None:
    damaged = dp.UNPADDED_CRC.replace(b"!B9F", b"!B9E")
    assert P1Framer().feed(damaged) == [damaged]
    with pytest.raises(MeterReadError) as caught:
        decode_telegram(damaged, "5")
    assert caught.value.kind == "crc"


# --- defect 3: the flavours dsmr-parser knows --------------------------------------------


def test_ireland_iskra() -> None:
    assert values(dp.ISKRA_IE, "ISKRA_IE") == {
        "energy_active_import": 20_363.0,
        "energy_active_export": 20_563.0,
        "energy_active_import_t1": 10_181.0,
        "energy_active_import_t2": 10_182.0,
        "energy_active_export_t1": 10_281.0,
        "energy_active_export_t2": 10_282.0,
        "power_active": -100.0,
        "power_active_l1": -10.0,
        "power_active_l2": -10.0,
        "power_active_l3": -10.0,
        "voltage_l1": 242.5,
        "voltage_l2": 241.7,
        "voltage_l3": 243.3,
        "current_l1": 0.0,
        "current_l2": 0.0,
        "current_l3": 0.0,
    }


def test_hungary_eon() -> None:
    assert values(dp.EON_HU, "5EONHU") == pytest.approx(
        {
            "energy_active_import": 173_640.0,
            "energy_active_export": 627_177.0,
            "energy_active_import_t1": 47_719.0,
            "energy_active_import_t2": 125_921.0,
            "energy_active_export_t1": 401_829.0,
            "energy_active_export_t2": 225_348.0,
            "energy_reactive_import": 123.0,
            "energy_reactive_export": 303_131.0,
            "power_active": -2601.0,
            "power_factor": 4.556,
            "power_factor_l1": 4.591,
            "power_factor_l2": 4.542,
            "power_factor_l3": 4.552,
            "voltage_l1": 240.4,
            "voltage_l2": 239.1,
            "voltage_l3": 241.2,
            "current_l1": 3.0,
            "current_l2": 4.0,
            "current_l3": 3.0,
            "frequency": 50.0,
        }
    )


def test_easymeter_q3d_with_its_f_group_and_trailing_lines() -> None:
    framer = P1Framer()
    frames = [f for f in framer.feed(dp.Q3D) if isinstance(f, bytes)]
    assert len(frames) == 1
    assert values(frames[0], "Q3D") == pytest.approx(
        {
            "energy_active_import": 52_185_782.5309,
            "energy_active_export": 19_949_322.1493,
            "power_active": 2124.86,
            "power_active_l1": 747.85,
            "power_active_l2": 737.28,
            "power_active_l3": 639.73,
        }
    )


def test_a_q3d_forced_to_dsmr5_fails_and_as_q3d_it_reads() -> None:
    frame = P1Framer().feed(dp.Q3D)[0]
    assert isinstance(frame, bytes)
    with pytest.raises(MeterReadError) as caught:
        decode_telegram(frame, "5")  # DSMR 5 insists on a CRC the Q3D does not send
    assert caught.value.kind == "crc"
    assert "energy_active_import" in values(frame, "Q3D")


SAGEMCOM_VALUES = {
    "energy_active_import": 6_545_766.0,
    "energy_active_export": 58.0,
    "energy_active_import_t1": 5_017_120.0,
    "energy_active_import_t2": 1_528_646.0,
    "energy_active_export_t1": 0.0,
    "energy_active_export_t2": 58.0,
    "energy_reactive_import": 747.0,
    "energy_reactive_export": 3_897_726.0,
    "power_active": 286.0,
    "power_reactive": -166.0,
}


def test_austria_sagemcom_t210_d_is_decrypted_with_the_meters_keys() -> None:
    frame = gcm_frame(dp.SAGEMCOM_T210_D_R, ENCRYPTION_KEY, SAGEMCOM_AUTH_KEY)
    keys = DsmrKeys(ENCRYPTION_KEY, SAGEMCOM_AUTH_KEY)
    assert values(frame, "SAGEMCOM_T210_D_R", keys) == SAGEMCOM_VALUES
    # without its authentication key the tag is not checked; the CRC inside still is
    assert values(frame, "SAGEMCOM_T210_D_R", DsmrKeys(ENCRYPTION_KEY)) == SAGEMCOM_VALUES


# --- defects 2 and 4: Luxembourg Smarty, encrypted, with reactive values ----------------------


def test_the_smarty_plaintext_keeps_reactive_energy_and_power() -> None:
    assert values(dp.LUXEMBOURG_SMARTY, "5L") == SMARTY_VALUES
    gas = decode_telegram(dp.LUXEMBOURG_SMARTY, "5L").mbus[1]
    assert gas.quantity.value == Decimal("14239.771")


def test_an_encrypted_smarty_frame_reads_with_the_meters_key_alone() -> None:
    frame = gcm_frame(dp.LUXEMBOURG_SMARTY, ENCRYPTION_KEY, SMARTY_AUTH_KEY)
    assert values(frame, "5L", DsmrKeys(ENCRYPTION_KEY)) == SMARTY_VALUES


def test_a_wrong_key_or_a_damaged_frame_is_a_decrypt_error_that_names_no_key() -> None:
    frame = gcm_frame(dp.LUXEMBOURG_SMARTY, ENCRYPTION_KEY, SMARTY_AUTH_KEY)
    wrong = "0123456789ABCDEF0123456789ABCDEF"
    damaged = bytearray(frame)
    damaged[150] ^= 0xFF
    for candidate, key in ((frame, wrong), (bytes(damaged), ENCRYPTION_KEY)):
        with pytest.raises(MeterReadError) as caught:
            decode_telegram(candidate, "5L", DsmrKeys(key))
        assert caught.value.kind == "decrypt"
        assert key not in str(caught.value) and key.lower() not in str(caught.value)


def test_sweden_total_reactive_power() -> None:
    # Not from dsmr-parser (it has no Swedish telegram): the lines of the Swedish standard its
    # SWEDEN table cites (Energiforetagen, branschrekommendation lokalt granssnitt v2.0).

    from tests.fakes.telegrams import with_crc

    body = (
        "/ELL5\\253833635_A\r\n\r\n0-0:1.0.0(210217184019W)\r\n"
        "1-0:1.8.0(00006678.394*kWh)\r\n1-0:2.8.0(00000000.000*kWh)\r\n"
        "1-0:1.7.0(0000.000*kW)\r\n1-0:2.7.0(0001.250*kW)\r\n"
        "1-0:3.7.0(0000.000*kvar)\r\n1-0:4.7.0(0000.386*kvar)\r\n!"
    )
    found = values(with_crc(body), "5S")
    assert found["power_reactive"] == -386.0
    assert found["power_active"] == -1250.0


# --- an encrypted meter on a pty, configured as an installer would -------------------------


@pytest.fixture
async def pty(tmp_path: Path) -> AsyncIterator[PtyPair]:
    async with PtyPair(tmp_path) as pair:
        yield pair


def smarty_config(port: str, tmp_path: Path, **bus: Any) -> Config:
    text = (
        "gateway: {id: site-1}\n"
        "buses:\n"
        f"  p1: {{type: dsmr-p1, port: {port}, dsmr_version: 5L,"
        " encryption_key: '${SMARTY_KEY}'}\n"
        "meters:\n"
        "  - {id: elec, bus: p1, interval: 0.2}\n"
        "  - {id: gas, bus: p1, mbus_channel: 1, interval: 0.2}\n"
    )
    return parse_config(text, str(tmp_path / "c.yaml"), {"SMARTY_KEY": ENCRYPTION_KEY})


async def test_a_smarty_pushing_encrypted_frames_is_read_and_its_key_never_logged(
    pty: PtyPair, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    health = Health()
    frame = gcm_frame(dp.LUXEMBOURG_SMARTY, ENCRYPTION_KEY, SMARTY_AUTH_KEY)
    config = smarty_config(pty.gateway, tmp_path)
    assert ENCRYPTION_KEY not in repr(config)
    async with PtyDevice(pty.device) as meter, open_readers(config, health=health) as readers:
        reading = asyncio.create_task(readers["elec"].read())
        await asyncio.sleep(0.1)
        await meter.write(b"\x00noise" + frame[:40], chunk=20, pause=0.01)
        await meter.write(frame[40:] + frame, chunk=64, pause=0.01)
        assert await reading == SMARTY_VALUES
        gas = await readers["gas"].read()
        assert gas == {"gas_volume": pytest.approx(14239.771)}
        damaged = bytearray(frame)
        damaged[100] ^= 0x01
        await meter.write(bytes(damaged))
        await asyncio.sleep(0.2)
        assert await readers["elec"].read() == SMARTY_VALUES
    assert health.buses["p1"].errors["decrypt"] >= 1
    assert ENCRYPTION_KEY not in caplog.text and ENCRYPTION_KEY.lower() not in caplog.text


@pytest.mark.parametrize(
    ("bus", "expected"),
    [
        ("dsmr_version: 5L, encryption_key: 'abc'", "must be 32 hex digits"),
        ("dsmr_version: 5, encryption_key: " + ENCRYPTION_KEY, "applies to encrypted meters"),
        ("dsmr_version: SAGEMCOM_T210_D_R", "needs encryption_key"),
    ],
)
def test_key_mistakes_are_config_errors_that_do_not_repeat_the_key(
    bus: str, expected: str, tmp_path: Path
) -> None:
    from core.config_errors import ConfigError

    text = (
        "gateway: {id: site-1}\n"
        f"buses:\n  p1: {{type: dsmr-p1, port: /dev/null, {bus}}}\n"
        "meters:\n  - {id: elec, bus: p1}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, str(tmp_path / "c.yaml"), {})
    message = str(caught.value)
    assert expected in message and "c.yaml:3" in message
    assert ENCRYPTION_KEY not in message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 600), st.integers(0, 255))
def test_random_or_damaged_encrypted_frames_never_raise_anything_but_our_error(
    noise: bytes, position: int, flip: int
) -> None:
    frame = bytearray(gcm_frame(dp.LUXEMBOURG_SMARTY, ENCRYPTION_KEY, SMARTY_AUTH_KEY))
    frame[position % len(frame)] ^= flip
    framer = GcmFramer()
    for item in framer.feed(b"\xdb" + noise) + framer.feed(bytes(frame)):
        assert isinstance(item, bytes)
        for keys in (DsmrKeys(ENCRYPTION_KEY), DsmrKeys(ENCRYPTION_KEY, SMARTY_AUTH_KEY)):
            try:
                found = values(item, "5L", keys)
            except MeterReadError:
                continue
            assert found == SMARTY_VALUES  # only an intact frame decrypts


@pytest.mark.parametrize(
    ("version", "plain", "auth", "expected"),
    [
        ("5L", dp.LUXEMBOURG_SMARTY, SMARTY_AUTH_KEY, SMARTY_VALUES),
        ("SAGEMCOM_T210_D_R", dp.SAGEMCOM_T210_D_R, SAGEMCOM_AUTH_KEY, SAGEMCOM_VALUES),
    ],
    ids=["smarty", "sagemcom-without-tag-check"],
)
def test_every_single_changed_byte_of_an_encrypted_frame_gives_our_error_or_the_values(
    version: str, plain: bytes, auth: str, expected: dict[str, float]
) -> None:
    frame = gcm_frame(plain, ENCRYPTION_KEY, auth)
    refused = 0
    for position in range(len(frame)):
        damaged = bytearray(frame)
        damaged[position] ^= 0x01
        try:
            found = values(bytes(damaged), version, DsmrKeys(ENCRYPTION_KEY))
        except MeterReadError:
            refused += 1
            continue
        # the tag (Smarty) or the CRC inside (Sagemcom without its tag key) catches every
        # change of the ciphertext; what passes (a length byte) changes no value
        assert found == expected, position
    assert refused >= len(frame) - 16
