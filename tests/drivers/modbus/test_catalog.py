"""Every built-in map reads right: a simulated device built from the same map, read by the real
ModbusReader over real loopback TCP, checked value by value and request by request; plus raw
register words written the way the manufacturers' documents describe them ("golden" checks),
so the simulator's encoder and the reader's decoder cannot be wrong the same way unnoticed.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

import pytest

from core.channels import unit_of
from drivers.base import MeterReadError
from drivers.modbus.planner import ReadRequest, plan_reads
from drivers.modbus.reader import ModbusReader
from drivers.modbus.register_map import (
    RegisterMap,
    RegisterMapError,
    RegisterSpec,
    ScaleRegister,
    builtin_models,
    is_scale_factor,
    load_builtin,
    parse_map,
    unit_multiplier,
    unit_problem,
)
from drivers.modbus.transports import ModbusTcpBus
from tests.fakes.modbus_device import SimulatedMeter, serve_modbus_tcp

MODELS = builtin_models()
#: The issue's list; a model missing here is a map someone deleted.
REQUIRED_MODELS = {
    "sdm72",
    "sdm120",
    "sdm220",
    "sdm230",
    "sdm630",
    "em24",
    "em340",
    "abb_b2x",
    "iem3x50",
    "iem3x55",
    "pm5xxx",
    "umg96rm",
    "pac2200",
    "dtsu666",
    "finder7m",
    "sunspec",
}


def minimal_plan(register_map: RegisterMap) -> list[ReadRequest]:
    """The planner's minimum for a full read of the map (scale-factor registers included)."""
    return plan_reads(
        register_map.registers_to_read(),
        max_count=register_map.max_registers_per_request,
        max_gap=register_map.max_gap,
        forbidden=register_map.forbidden,
    )


def sample_values(register_map: RegisterMap) -> tuple[dict[str, float], dict[ScaleRegister, int]]:
    """Channel values each register holds exactly, and the exponent each scale group needs.

    One value per register location (a register feeding two channels gets one raw value):
    integers are whole counts of the register's resolution (negative ones for signed types,
    beyond 16 bits for 32/64-bit types so the word order matters), floats are float32-exact.
    Values behind a scale factor are counts ending in 3 over 10 or 100, so exactly one
    exponent (-1 or -2) holds them: the simulator must find it and the reader must apply it.
    """
    values: dict[str, float] = {}
    exponents: dict[ScaleRegister, int] = {}
    raw_at: dict[tuple[str, int], float] = {}
    for index, spec in enumerate(register_map.registers):
        key = (spec.table, spec.address)
        if key not in raw_at:
            raw_at[key] = _raw_sample(spec, index)
        raw = raw_at[key]
        ref = spec.scale_register
        if ref is None:
            values[spec.channel] = raw * spec.scale
            continue
        exponent = exponents.setdefault(ref, -1 - len(exponents) % 2)
        values[spec.channel] = raw / 10**-exponent * spec.scale
    return values, exponents


def _raw_sample(spec: RegisterSpec, index: int) -> float:
    negative = spec.type.startswith("s") and index % 2 == 1
    if spec.scale_register is not None:
        count = 1003 + 10 * index if spec.words == 1 else 1_000_003 + 10 * index
        return float(-count if negative else count)
    if spec.type in ("f32", "f64"):
        magnitude = 200 + 1.25 * (index + 1) if spec.type == "f32" else 1e9 + 0.5 * index
        return -magnitude if index % 2 else magnitude
    by_width = {1: 1000 + 37 * index, 2: 100_000 + 7919 * index, 4: 5_000_000_000 + index}
    whole = by_width[spec.words]
    return float(-whole if negative else whole)


async def read_through_tcp(
    register_map: RegisterMap, values: Mapping[str, float], *, words: Mapping[int, list[int]] = {}
) -> tuple[dict[str, float], SimulatedMeter, ModbusReader]:
    """Serve the map with `values` (then raw `words` at those addresses of the map's table)
    and read it once with the real reader."""
    meter = SimulatedMeter(register_map, unit_id=7)
    meter.set_values(values)
    for address, raw in words.items():
        meter.set_words(_table_of(register_map, address), address, raw)
    async with (
        serve_modbus_tcp([meter]) as server,
        ModbusTcpBus("catalog", "127.0.0.1", server.port, timeout_secs=2) as bus,
    ):
        reader = ModbusReader("catalog", bus, 7, register_map, timeout_secs=2)
        values_read = await reader.read()
    return values_read, meter, reader


def _table_of(register_map: RegisterMap, address: int) -> str:
    for spec in register_map.registers_to_read():
        if spec.address <= address < spec.end:
            return spec.table
    raise AssertionError(f"{address} is no register of {register_map.model}")


def test_every_model_the_issue_names_has_a_map() -> None:
    assert set(MODELS) >= REQUIRED_MODELS


@pytest.mark.parametrize("model", MODELS)
def test_units_scales_and_channels_agree(model: str) -> None:
    """What each register counts, times its scale, is exactly its channel's unit."""
    register_map = load_builtin(model)
    for spec in register_map.registers:
        assert unit_problem(spec) is None, spec.channel
        if spec.unit:
            multiplier, base = unit_multiplier(spec.unit)
            assert base == unit_of(spec.channel), spec.channel
            if spec.unit.strip() != base:
                assert math.isclose(multiplier, spec.scale), spec.channel
        else:
            assert unit_of(spec.channel) == "" and spec.scale == 1, spec.channel


@pytest.mark.parametrize("model", MODELS)
async def test_a_simulated_device_reads_back_value_by_value_in_the_minimum_requests(
    model: str,
) -> None:
    register_map = load_builtin(model)
    values, exponents = sample_values(register_map)
    values_read, meter, reader = await read_through_tcp(register_map, values)
    wrong = {c: (values_read.get(c), v) for c, v in values.items() if values_read.get(c) != v}
    assert not wrong, f"{model}: channel -> (read, expected): {wrong}"
    assert values_read.keys() == values.keys()
    assert meter.exponents == exponents  # the scale factors the values needed were on the wire
    plan = minimal_plan(register_map)
    read_factors = {r.address for req in reader.plan for r in req.registers if is_scale_factor(r)}
    assert read_factors == {ref.address for ref in register_map.scale_registers()}
    assert [(r.table, r.address, r.count) for r in plan] == meter.served
    assert len(reader.plan) == len(plan)


#: Raw registers as the manufacturers document them -> channel values in our units.
GOLDEN: dict[str, list[tuple[dict[int, list[int]], dict[str, float]]]] = {
    # Eastron: IEEE 754 float32, high word first: 0x4366 0x8000 is 230.5.
    "sdm630": [({0x0000: [0x4366, 0x8000], 0x0048: [0x4640, 0xE600]},
                {"voltage_l1": 230.5, "energy_active_import": 12_345_500.0})],
    "sdm72": [({0x0000: [0x4366, 0x8000]}, {"voltage_l1": 230.5})],
    "sdm120": [({0x000C: [0x449A, 0x5000]}, {"power_active": 1234.5, "power_active_l1": 1234.5})],
    "sdm220": [({0x0046: [0x4247, 0xE000]}, {"frequency": 49.96875})],
    "sdm230": [({0x0048: [0x3FC0, 0x0000]}, {"energy_active_import": 1500.0})],
    # Carlo Gavazzi: INT32 with the least significant word first; 0x86A0 0x0001 is 100000.
    "em24": [({0x000C: [0x86A0, 0x0001], 0x0012: [0xFF9C, 0xFFFF], 0x003E: [0x86A0, 0x0001]},
              {"current_l1": 100.0, "power_active_l1": -10.0,
               "energy_active_import": 10_000_000.0})],
    "em24_e1": [({0x0034: [0x86A0, 0x0001], 0x0033: [500]},
                 {"energy_active_import": 10_000_000.0, "frequency": 50.0})],
    "em340": [({0x0000: [0x08FE, 0x0000], 0x002E: [0xFC7C]},
               {"voltage_l1": 230.2, "power_factor_l1": -0.9})],
    # ABB: big-endian words; energies UINT64 in 0.01 kWh, power INT32 in 0.01 W.
    "abb_b2x": [({0x5000: [0, 0, 0x0001, 0x86A0], 0x5B14: [0xFFFF, 0xFF9C], 0x5B2C: [5000]},
                 {"energy_active_import": 1_000_000.0, "power_active": -1.0,
                  "frequency": 50.0})],
    # Schneider: float32 kW, INT64 Wh.
    "iem3x50": [({3059: [0x3FC0, 0x0000], 3203: [0, 0, 0, 0x04D2]},
                 {"power_active": 1500.0, "energy_active_import": 1234.0})],
    "iem3x55": [({3207: [0, 0, 0x0001, 0x0000]}, {"energy_active_export": 65536.0})],
    "pm5xxx": [({3067: [0x3FC0, 0x0000], 3219: [0, 0, 0, 7]},
                {"power_reactive": 1500.0, "energy_reactive_import": 7.0})],
    "umg96rm": [({19068: [0x449A, 0x5000]}, {"energy_active_import": 1234.5})],
    # Siemens: float64 energies in Wh.
    "pac2200": [({801: [0x4093, 0x4A00, 0x0000, 0x0000]}, {"energy_active_import": 1234.5})],
    # DTSU666: phase voltage Ua at 0x2006 (Uab at 0x2000 is line-to-line), float32 in 0.1 V.
    "dtsu666": [({0x2006: [0x4510, 0x1000], 0x2000: [0x457A, 0x0000]},
                 {"voltage_l1": 230.5, "voltage_l1_l2": 400.0})],
    # Finder: energies float32 in Wh (100000.0 is 0x47C35000).
    "finder7m": [({2752: [0x47C3, 0x5000]}, {"energy_active_import": 100_000.0})],
    # SunSpec 103: A = 1234 with A_SF = -2 is 12.34 A; W = -100 with W_SF = 1 is -1000 W;
    # PF = -90 % with PF_SF = 0 is -0.9; WH = 100000 with WH_SF = 0.
    "sunspec": [({40071: [1234], 40075: [0xFFFE], 40083: [0xFF9C], 40084: [0x0001],
                  40091: [0xFFA6], 40092: [0x0000], 40093: [0x0001, 0x86A0], 40095: [0]},
                 {"current": 12.34, "power_active": -1000.0, "power_factor": -0.9,
                  "energy_active_export": 100_000.0})],
}  # fmt: skip


def test_every_map_has_golden_words() -> None:
    assert set(GOLDEN) == set(MODELS)


def test_golden_words_are_what_the_types_say() -> None:
    """The literals above are the documents' encodings, checked here by the standard library."""
    assert struct.unpack(">f", bytes.fromhex("43668000"))[0] == 230.5
    assert struct.unpack(">d", bytes.fromhex("40934A0000000000"))[0] == 1234.5
    assert int.from_bytes(bytes.fromhex("000186A0"), "big") == 100_000


@pytest.mark.parametrize(
    ("model", "case"), [(m, case) for m, cases in GOLDEN.items() for case in cases]
)
async def test_golden_words_decode_as_the_manufacturer_documents(
    model: str, case: tuple[dict[int, list[int]], dict[str, float]]
) -> None:
    words, expected = case
    register_map = load_builtin(model)
    values, _ = sample_values(register_map)
    values_read, _, _ = await read_through_tcp(register_map, values, words=words)
    for channel, value in expected.items():
        assert values_read[channel] == pytest.approx(value, rel=1e-12), channel


async def test_a_phase_the_device_does_not_have_is_left_out_not_invented() -> None:
    """An ABB B21 answers "not available" (all bits set) for phases 2 and 3."""
    register_map = load_builtin("abb_b2x")
    values, _ = sample_values(register_map)
    absent = {
        "voltage_l2": [0xFFFF, 0xFFFF],
        "current_l3": [0xFFFF, 0xFFFF],
        "power_active_l2": [0x7FFF, 0xFFFF],
        "energy_active_import_l3": [0xFFFF] * 4,
    }
    words = {register_map.register(c).address: raw for c, raw in absent.items()}
    values_read, _, _ = await read_through_tcp(register_map, values, words=words)
    assert not set(absent) & values_read.keys()
    assert values_read["voltage_l1"] == values["voltage_l1"]


async def test_a_required_value_the_device_calls_unavailable_fails_the_read() -> None:
    register_map = load_builtin("abb_b2x")
    values, _ = sample_values(register_map)
    address = register_map.register("energy_active_import").address
    with pytest.raises(MeterReadError, match=r"energy_active_import.*not available") as caught:
        await read_through_tcp(register_map, values, words={address: [0xFFFF] * 4})
    assert caught.value.kind == "garbage"


async def test_one_register_feeding_two_channels_is_read_once() -> None:
    register_map = load_builtin("sdm120")
    values, _ = sample_values(register_map)
    assert values["power_active"] == values["power_active_l1"]
    values_read, meter, reader = await read_through_tcp(register_map, values)
    assert values_read["power_active"] == values_read["power_active_l1"] == values["power_active"]
    (request,) = [r for r in reader.plan if r.address <= 0x000C < r.end]
    assert {"power_active", "power_active_l1"} <= {r.channel for r in request.registers}
    assert len(meter.served) == len(reader.plan)


USER_MAP = """\
model: mine
registers:
  - {channel: energy_active_total, address: 0, table: holding, type: u32, scale: 10, unit: 0.01 kWh}
  - {channel: power_active_l1, address: 4, table: holding, type: s16, unit: W}
  - {channel: power_active, address: 4, table: holding, type: s16, unit: W}
  - {channel: current, address: 6, table: holding, type: u16,
     scale_register: {address: 7, table: holding}}
"""


def test_a_user_map_with_units_aliases_and_a_scale_register_loads() -> None:
    register_map = parse_map(USER_MAP, "mine.yaml")
    assert register_map.register("energy_active_total").scale == 10
    assert [r.address for r in register_map.registers_to_read()] == [0, 4, 4, 6, 7]


@pytest.mark.parametrize(
    ("old", "new", "where", "why"),
    [
        ("scale: 10, unit: 0.01 kWh", "unit: kWh", ":3: registers[0].unit:", "needs scale 1000"),
        ("unit: 0.01 kWh", "unit: 0.01 kvarh", ":3: registers[0].unit:", "is in varh"),
        ("unit: 0.01 kWh", "unit: 0.01 kWatt", ":3: registers[0].unit:", "unknown unit"),
        ("address: 4, table: holding, type: s16, unit: W}\n  - {channel: power_active,",
         "address: 4, table: holding, type: s16, unit: W}\n  - {channel: power_active, "
         "word_order: little,", ":5: registers[2].address:", "overlaps"),
        ("{address: 7,", "{address: 1,", ":7: registers[3].scale_register:",
         "inside energy_active_total"),
        ("type: s16, unit: W}\n  - {channel: power_active,",
         "type: s16, unit: W, unavailable: 0x10000}\n  - {channel: power_active,",
         ":4: registers[1]:", "does not fit a s16"),
    ],
)  # fmt: skip
def test_a_map_that_would_read_wrong_is_refused_at_its_line(
    old: str, new: str, where: str, why: str
) -> None:
    assert old in USER_MAP
    with pytest.raises(RegisterMapError) as caught:
        parse_map(USER_MAP.replace(old, new, 1), "mine.yaml")
    assert f"mine.yaml{where}" in str(caught.value)
    assert why in str(caught.value)
