"""D0 (IEC 62056-21) data from vzlogger's test suite, with the values its tests assert.

Source: github.com/volkszaehler/vzlogger tests/MeterD0.cpp (snapshot 2a4d18e4, 2026-07):
TEST(MeterD0, HagerEHZ_basic), HagerEHZ_waitsync, LandisGyr_basic, ACE3000_basic, LuG_E350.
The bytes are those the tests write to the meter's fifo (`writes` / `writes_hex`); facts only.
"""

from __future__ import annotations

from typing import Final

#: Hager eHZ in push mode: two blocks, no STX/ETX, `!` LF. vzlogger reads 1-0:1.8.0 = 1.2963
#: from the first, 1-0:1.7.0 = 1.2964 and 1-0:1.9.0 = 1.2965 from the second (no units).
HAGER_EHZ_BLOCKS: Final = (
    b"/HAG5eHZ010C_EHZ1vA02\r\n1-0:1.8.0*255(000001.2963)\r\n!\n",
    b"/HAG5eHZ010C_EHZ1vA02\r\n1-0:1.7.0*255(000001.2964)\r\n1-0:1.9.0*255(000001.2965)\r\n!\n",
)
#: HagerEHZ_waitsync: the first block lost its `/` (the port opened mid-block); vzlogger skips
#: it and reads 2-1:2.3.4 = 999999.9999 from the next.
HAGER_EHZ_MID_BLOCK: Final = b"HAG5eHZ010C_EHZ1vA02\r\n1-0:1.8.0*255(000001.2963)\r\n!\n"

#: Landis+Gyr ZMD120 readout (vzlogger: 1.8.1 = 1846.0, 1.8.2 = 0.0, 2.8.1 = 4329.6 kWh).
LANDIS_GYR_IDENTIFICATION: Final = b"/LGZ52ZMD120APt.G03\r\n"
LANDIS_GYR_BLOCK: Final = (
    "F.F(00000000)\r\n"
    "0.0.0( 20000)\r\n"
    "1.8.1(001846.0*kWh)\r\n"
    "1.8.2(000000.0*kWh)\r\n"
    "2.8.1(004329.6*kWh)\r\n"
    "2.8.2(000000.0*kWh)\r\n"
    "1.8.0(001846.0*kWh)\r\n"
    "2.8.0(004329.6*kWh)\r\n"
)

#: Itron ACE3000 type 260: five DEL bytes and the echoed request before its identification,
#: a unit-less 1.8.0 (vzlogger reads 13925.5), junk before `!`, and a BCC that does not match
#: (0x46 sent; the XOR of the block is 0x4D), then another DEL.
ACE3000_PREAMBLE: Final = bytes.fromhex("7f7f7f7f7f2f3f210d0a")
ACE3000_IDENTIFICATION: Final = bytes.fromhex("2f414345305c336b3236305630312e31390d0a")
ACE3000_MESSAGE: Final = bytes.fromhex(
    "02462e46283030290d0a432e31283131323631"
    "3230303533333232333533290d0a"
    "432e352e30283030290d0a"
    "312e382e30283031333932352e352a29590202010021"
    "0d0a03467f"
)

#: Landis+Gyr E350 (ZMF100): LF LF line ends, two-part codes (32.7, 31.7, 16.7) for voltage,
#: current and power; sent unasked, STX but no ETX/BCC; vzlogger reads 23 values, the last
#: C.5.0 = 1420.
LUG_E350: Final = bytes.fromhex(
    "2f4c475a345a4d4631303041432e4d32370a0a"
    "02462e46283030290a0a302e30282020"
    "2020202020203138343338363336290a"
    "0a432e312e3028313834333836333629"
    "0a0a432e312e31282020202020202020"
    "290a0a312e382e31283030303030302e"
    "3030302a6b5768290a0a312e382e3228"
    "3030303231392e3235312a6b5768290a"
    "0a322e382e31283030303030302e3030"
    "302a6b5768290a0a322e382e32283030"
    "303030302e3030302a6b5768290a0a31"
    "2e382e30283030303231392e3235322a"
    "6b5768290a0a322e382e302830303030"
    "30302e3030302a6b5768290a0a31352e"
    "382e30283030303231392e3235322a6b"
    "5768290a0a432e372e30283030303429"
    "0a0a33322e37283233332a56290a0a35"
    "322e37283233332a56290a0a37322e37"
    "283233342a56290a0a33312e37283030"
    "322e33302a41290a0a35312e37283030"
    "322e33322a41290a0a37312e37283030"
    "322e39372a41290a0a31362e37283030"
    "312e36362a6b57290a0a38322e382e31"
    "2830303030290a0a38322e382e322830"
    "303030290a0a302e322e30284d323729"
    "0a0a432e352e302831343230290a0a21"
)
