"""Real telegrams for the simulated serial meters, from the standards' published examples and
from meters in the field (via the parsers' own test suites), with what a user should read.

DSMR 5.0.2 P1 Companion Standard, example telegram: the document prints `!EF2F`, which is
not the CRC of its own text (a known erratum); `dsmr5_example()` appends the correct CRC,
computed here with an independent CRC-16/ARC.
"""

from __future__ import annotations

from binascii import a2b_hex
from typing import Final


def crc16_arc(data: bytes) -> int:
    """CRC-16/ARC (poly 0xA001 reflected, init 0): the DSMR P1 checksum."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(body: str) -> bytes:
    """`body` runs from `/` to `!` inclusive; returns the telegram with its CRC and CR LF."""
    raw = body.encode("ascii")
    return raw + f"{crc16_arc(raw):04X}\r\n".encode("ascii")


DSMR5_EXAMPLE_BODY: Final = (
    "/ISk5\\2MT382-1000\r\n"
    "\r\n"
    "1-3:0.2.8(50)\r\n"
    "0-0:1.0.0(101209113020W)\r\n"
    "0-0:96.1.1(4B384547303034303436333935353037)\r\n"
    "1-0:1.8.1(123456.789*kWh)\r\n"
    "1-0:1.8.2(123456.789*kWh)\r\n"
    "1-0:2.8.1(123456.789*kWh)\r\n"
    "1-0:2.8.2(123456.789*kWh)\r\n"
    "0-0:96.14.0(0002)\r\n"
    "1-0:1.7.0(01.193*kW)\r\n"
    "1-0:2.7.0(00.000*kW)\r\n"
    "0-0:96.7.21(00004)\r\n"
    "0-0:96.7.9(00002)\r\n"
    "1-0:99.97.0(2)(0-0:96.7.19)(101208152415W)(0000000240*s)(101208151004W)(0000000301*s)\r\n"
    "1-0:32.32.0(00002)\r\n"
    "1-0:52.32.0(00001)\r\n"
    "1-0:72.32.0(00000)\r\n"
    "1-0:32.36.0(00000)\r\n"
    "1-0:52.36.0(00003)\r\n"
    "1-0:72.36.0(00000)\r\n"
    "0-0:96.13.0(303132333435363738393A3B3C3D3E3F303132333435363738393A3B3C3D3E3F"
    "303132333435363738393A3B3C3D3E3F303132333435363738393A3B3C3D3E3F"
    "303132333435363738393A3B3C3D3E3F)\r\n"
    "1-0:32.7.0(220.1*V)\r\n"
    "1-0:52.7.0(220.2*V)\r\n"
    "1-0:72.7.0(220.3*V)\r\n"
    "1-0:31.7.0(001*A)\r\n"
    "1-0:51.7.0(002*A)\r\n"
    "1-0:71.7.0(003*A)\r\n"
    "1-0:21.7.0(01.111*kW)\r\n"
    "1-0:41.7.0(02.222*kW)\r\n"
    "1-0:61.7.0(03.333*kW)\r\n"
    "1-0:22.7.0(04.444*kW)\r\n"
    "1-0:42.7.0(05.555*kW)\r\n"
    "1-0:62.7.0(06.666*kW)\r\n"
    "0-1:24.1.0(003)\r\n"
    "0-1:96.1.0(3232323241424344313233343536373839)\r\n"
    "0-1:24.2.1(101209112500W)(12785.123*m3)\r\n"
    "!"
)


def dsmr5_example(**replace: str) -> bytes:
    """The DSMR 5.0.2 example with a correct CRC; `replace` swaps whole values first."""
    body = DSMR5_EXAMPLE_BODY
    for old, new in replace.items():
        body = body.replace(old, new)
    return with_crc(body)


#: What the DSMR 5 example reads as, in canonical channels.
DSMR5_EXAMPLE_VALUES: Final = {
    "energy_active_import": 246_913_578.0,
    "energy_active_export": 246_913_578.0,
    "energy_active_import_t1": 123_456_789.0,
    "energy_active_import_t2": 123_456_789.0,
    "energy_active_export_t1": 123_456_789.0,
    "energy_active_export_t2": 123_456_789.0,
    "power_active": 1193.0,
    "power_active_l1": 1111.0 - 4444.0,
    "power_active_l2": 2222.0 - 5555.0,
    "power_active_l3": 3333.0 - 6666.0,
    "voltage_l1": 220.1,
    "voltage_l2": 220.2,
    "voltage_l3": 220.3,
    "current_l1": 1.0,
    "current_l2": 2.0,
    "current_l3": 3.0,
}
#: Its gas meter: 12785.123 m3 captured 2010-12-09 11:25:00 winter time (UTC+1).
DSMR5_EXAMPLE_GAS: Final = (12785.123, 1_291_890_300_000)

#: Belgian e-MUCS P1 edition 1.7.1, example telegram (gas on M-Bus channel 1 with the Belgian
#: non-temperature-corrected 24.2.3, a water meter on channel 2), with its printed CRC.
EMUCS_EXAMPLE: Final = (
    b"/FLU5\\253769484_A\r\n"
    b"\r\n"
    b"0-0:96.1.4(50217)\r\n"
    b"0-0:96.1.1(3153414733313031303231363035)\r\n"
    b"0-0:1.0.0(200512135409S)\r\n"
    b"1-0:1.8.1(000000.034*kWh)\r\n"
    b"1-0:1.8.2(000015.758*kWh)\r\n"
    b"1-0:2.8.1(000000.000*kWh)\r\n"
    b"1-0:2.8.2(000000.011*kWh)\r\n"
    b"1-0:1.4.0(02.351*kW)\r\n"
    b"1-0:1.6.0(200509134558S)(02.589*kW)\r\n"
    b"0-0:98.1.0(3)(1-0:1.6.0)(1-0:1.6.0)(200501000000S)(200423192538S)(03.695*kW)"
    b"(200401000000S)(200305122139S)(05.980*kW)(200301000000S)(200210035421W)(04.318*kW)\r\n"
    b"0-0:96.14.0(0001)\r\n"
    b"1-0:1.7.0(00.000*kW)\r\n"
    b"1-0:2.7.0(00.000*kW)\r\n"
    b"1-0:21.7.0(00.000*kW)\r\n"
    b"1-0:41.7.0(00.000*kW)\r\n"
    b"1-0:61.7.0(00.000*kW)\r\n"
    b"1-0:22.7.0(00.000*kW)\r\n"
    b"1-0:42.7.0(00.000*kW)\r\n"
    b"1-0:62.7.0(00.000*kW)\r\n"
    b"1-0:32.7.0(234.7*V)\r\n"
    b"1-0:52.7.0(234.7*V)\r\n"
    b"1-0:72.7.0(234.7*V)\r\n"
    b"1-0:31.7.0(000.00*A)\r\n"
    b"1-0:51.7.0(000.00*A)\r\n"
    b"1-0:71.7.0(000.00*A)\r\n"
    b"0-0:96.3.10(1)\r\n"
    b"0-0:17.0.0(999.9*kW)\r\n"
    b"1-0:31.4.0(999*A)\r\n"
    b"0-0:96.13.0()\r\n"
    b"0-1:24.1.0(003)\r\n"
    b"0-1:96.1.1(37464C4F32313139303333373333)\r\n"
    b"0-1:24.4.0(1)\r\n"
    b"0-1:24.2.3(200512134558S)(00112.384*m3)\r\n"
    b"0-2:24.1.0(007)\r\n"
    b"0-2:96.1.1(3853414731323334353637383930)\r\n"
    b"0-2:24.2.1(200512134558S)(00872.234*m3)\r\n"
    b"!3AD7\r\n"
)
#: Both M-Bus readings were captured 2020-05-12 13:45:58 summer time (UTC+2).
EMUCS_MBUS_TS_MS: Final = 1_589_283_958_000

#: DSMR 4.2 from a Kaifa meter in the field (dsmr-parser's test suite), with its CRC.
DSMR42_KAIFA: Final = (
    b"/KFM5KAIFA-METER\r\n"
    b"\r\n"
    b"1-3:0.2.8(42)\r\n"
    b"0-0:1.0.0(161113205757W)\r\n"
    b"0-0:96.1.1(3960221976967177082151037881335713)\r\n"
    b"1-0:1.8.1(001581.123*kWh)\r\n"
    b"1-0:1.8.2(001435.706*kWh)\r\n"
    b"1-0:2.8.1(000000.000*kWh)\r\n"
    b"1-0:2.8.2(000000.000*kWh)\r\n"
    b"0-0:96.14.0(0002)\r\n"
    b"1-0:1.7.0(02.027*kW)\r\n"
    b"1-0:2.7.0(00.000*kW)\r\n"
    b"0-0:96.7.21(00015)\r\n"
    b"0-0:96.7.9(00007)\r\n"
    b"1-0:99.97.0(3)(0-0:96.7.19)(000104180320W)(0000237126*s)(000101000001W)"
    b"(2147583646*s)(000102000003W)(2317482647*s)\r\n"
    b"1-0:32.32.0(00000)\r\n"
    b"1-0:52.32.0(00000)\r\n"
    b"1-0:72.32.0(00000)\r\n"
    b"1-0:32.36.0(00000)\r\n"
    b"1-0:52.36.0(00000)\r\n"
    b"1-0:72.36.0(00000)\r\n"
    b"0-0:96.13.1()\r\n"
    b"0-0:96.13.0()\r\n"
    b"1-0:31.7.0(000*A)\r\n"
    b"1-0:51.7.0(006*A)\r\n"
    b"1-0:71.7.0(002*A)\r\n"
    b"1-0:21.7.0(00.170*kW)\r\n"
    b"1-0:22.7.0(00.000*kW)\r\n"
    b"1-0:41.7.0(01.247*kW)\r\n"
    b"1-0:42.7.0(00.000*kW)\r\n"
    b"1-0:61.7.0(00.209*kW)\r\n"
    b"1-0:62.7.0(00.000*kW)\r\n"
    b"0-1:24.1.0(003)\r\n"
    b"0-1:96.1.0(4819243993373755377509728609491464)\r\n"
    b"0-1:24.2.1(161129200000W)(00981.443*m3)\r\n"
    b"!6796\r\n"
)

#: DSMR 2.2 (no CRC; 9600 7E1), from a Iskra meter via dsmr-parser's test suite. Its gas
#: reading (24.3.0) spans two lines; the time stamp has no summer/winter flag.
DSMR22_EXAMPLE: Final = (
    b"/ISk5\\2MT382-1004\r\n"
    b"\r\n"
    b"0-0:96.1.1(00000000000000)\r\n"
    b"1-0:1.8.1(00001.001*kWh)\r\n"
    b"1-0:1.8.2(00001.001*kWh)\r\n"
    b"1-0:2.8.1(00001.001*kWh)\r\n"
    b"1-0:2.8.2(00001.001*kWh)\r\n"
    b"0-0:96.14.0(0001)\r\n"
    b"1-0:1.7.0(0001.01*kW)\r\n"
    b"1-0:2.7.0(0000.00*kW)\r\n"
    b"0-0:17.0.0(0999.00*kW)\r\n"
    b"0-0:96.3.10(1)\r\n"
    b"0-0:96.13.1()\r\n"
    b"0-0:96.13.0()\r\n"
    b"0-1:24.1.0(3)\r\n"
    b"0-1:96.1.0(000000000000)\r\n"
    b"0-1:24.3.0(161107190000)(00)(60)(1)(0-1:24.2.1)(m3)\r\n"
    b"(00001.001)\r\n"
    b"0-1:24.4.0(1)\r\n"
    b"!\r\n"
)

#: SML files from meters in the field (smllib's test suite). HOLLEY_SML: a Holley DTZ541
#: with a signed int16 active power, voltages, currents, phase angles and frequency.
HOLLEY_SML: Final = a2b_hex(
    "1b1b1b1b0101010176040000016200620072650000010176010107000002dba23c0b0a01484c5902000424a0"
    "010163945b0076040000026200620072650000070177010b0a01484c5902000424a00101f10477070100603201"
    "010101010104484c590177070100600100ff010101010b0a01484c5902000424a00177070100010800ff65001c"
    "81046502dba23d621e52ff6502aea1320177070100020800ff65001c81046502dba23d621e52ff620001770701"
    "00100700ff0101621b52005300890177070100200700ff0101622352ff6309280177070100340700ff01016223"
    "52ff6309290177070100480700ff0101622352ff63092201770701001f0700ff0101622152fe62290177070100"
    "330700ff0101622152fe624e0177070100470700ff0101622152fe622e0177070100510701ff01016208520062"
    "f00177070100510702ff01016208520062780177070100510704ff010162085200630110017707010051070fff"
    "010162085200630138017707010051071aff01016208520063011101770701000e0700ff0101622c52ff6301f4"
    "0177070100000200000101010109312e30322e3030370177070100605a02010101010105413031410177070100"
    "600500ff0101010165001c810401010163fc1e00760400000362006200726500000201710163e8230000001b1b"
    "1b1b1a0222ed"
)
HOLLEY_VALUES: Final = {
    "energy_active_import": 4_499_896.2,
    "energy_active_export": 0.0,
    "power_active": 137.0,
    "voltage_l1": 234.4,
    "voltage_l2": 234.5,
    "voltage_l3": 233.8,
    "current_l1": 0.41,
    "current_l2": 0.78,
    "current_l3": 0.46,
    "frequency": 50.0,
}

#: IEC 62056-21 readout as in the standard's examples: data sets `address(value*unit)`, an
#: error register, a billing-period value (`*12`, never a current reading) and a max demand
#: with its time stamp as a second value.
D0_IDENTIFICATION: Final = b"/LGZ5\\2ZMD3104107.B35\r\n"
D0_BLOCK: Final = (
    "F.F(00000000)\r\n"
    "0.0.0(71234567)\r\n"
    "0.9.1(095312)\r\n"
    "1.8.0(0012345.678*kWh)\r\n"
    "1.8.1(0010000.123*kWh)\r\n"
    "1.8.2(0002345.555*kWh)\r\n"
    "1.8.0*12(0011000.000*kWh)\r\n"
    "2.8.0(0000123.400*kWh)\r\n"
    "1.6.0(04.567*kW)(2405151415)\r\n"
    "16.7.0(-01.250*kW)\r\n"
    "32.7.0(230.4*V)52.7.0(231.0*V)72.7.0(229.8*V)\r\n"
    "31.7.0(005.12*A)51.7.0(004.50*A)71.7.0(003.25*A)\r\n"
    "14.7.0(50.01*Hz)\r\n"
)
D0_VALUES: Final = {
    "energy_active_import": 12_345_678.0,
    "energy_active_import_t1": 10_000_123.0,
    "energy_active_import_t2": 2_345_555.0,
    "energy_active_export": 123_400.0,
    "power_active": -1250.0,
    "voltage_l1": 230.4,
    "voltage_l2": 231.0,
    "voltage_l3": 229.8,
    "current_l1": 5.12,
    "current_l2": 4.5,
    "current_l3": 3.25,
    "frequency": 50.01,
}
