"""SML against smllib's test frames: every file its tests parse is read by our driver with its
checksum verified, and the values of one are compared with a decoding by hand.

Source: github.com/spacemanspiff2007/SmlLib tests/test_frames.py (test_frames,
test_frames_get_obis_fails, test_frames_kermit); the files are in tests/fakes/smllib_frames.py.
smllib's tests assert that each parses (and how many value-list entries it holds), not the
values; the values below are decoded by hand from the bytes per the SML specification
(BSI TR-03109-1: unit 0x1E Wh / 0x1B W, signed scaler, unsigned value).
"""

from __future__ import annotations

import pytest

from drivers.base import MeterReadError
from drivers.serial.obis_map import default_map
from drivers.serial.sml import SmlFramer, decode_file
from tests.fakes.smllib_frames import FILES, KERMIT_FILE


@pytest.mark.parametrize(("name", "entries", "hex_file"), FILES, ids=[f[0] for f in FILES])
def test_every_file_smllib_parses_is_read_with_its_checksum(
    name: str, entries: int, hex_file: str
) -> None:
    raw = bytes.fromhex(hex_file)
    assert SmlFramer().feed(raw) == [raw]
    telegram = decode_file(raw)
    assert 0 < len(telegram.readings) <= entries
    _, problems = default_map().apply(telegram.readings)
    assert problems == []
    damaged = bytearray(raw)
    damaged[len(raw) // 2] ^= 0x10
    with pytest.raises(MeterReadError):
        decode_file(bytes(damaged))


def test_an_ebz_meter_of_smllib_issue_8_reads_as_decoded_by_hand() -> None:
    # 1.8.0: 0x0000000A7AC1BC17 = 45009189911, scaler 0xFB (-5), Wh -> 450091.89911 Wh
    # 1.8.1: 0x0A74B1EA77 -> 449074.89911 Wh; 1.8.2: 0x060FD1A0 -> 1017 Wh
    # 2.8.0: 0x0D19E1C0 -> 2198 Wh; 16.7.0: 0x89D9 = 35289, scaler 0xFE -> 352.89 W
    raw = bytes.fromhex(dict((f[0], f[2]) for f in FILES)["Frame Issue #8 (OK)"])
    values, _ = default_map().apply(decode_file(raw).readings)
    assert values == pytest.approx(
        {
            "energy_active_import": 450_091.89911,
            "energy_active_import_t1": 449_074.89911,
            "energy_active_import_t2": 1017.0,
            "energy_active_export": 2198.0,
            "power_active": 352.89,
            "power_active_l1": 82.26,
            "power_active_l2": 27.06,
            "power_active_l3": 243.57,
        }
    )


def test_the_kermit_file_needs_crc_kermit() -> None:
    raw = bytes.fromhex(KERMIT_FILE)
    with pytest.raises(MeterReadError) as caught:
        decode_file(raw)
    assert caught.value.kind == "crc"
    values, _ = default_map().apply(decode_file(raw, "kermit").readings)
    assert values["energy_active_import"] == pytest.approx(10_793_898.7)
    assert values["power_active"] == 188.0
