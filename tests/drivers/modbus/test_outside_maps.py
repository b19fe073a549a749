"""Built-in register maps checked against register tables nobody here wrote.

The facts below are copied, as data, from these public sources (facts carry over; the code is
ours):

- volkszaehler/mbmd meters/rs485/finder7m38.go (commit 747ba6b0): Finder 7M.38, input
  registers, every value IEEE 754 float32 ("Energy counters (IEEE754 float32, in Wh)").
- volkszaehler/mbmd meters/rs485/dtsu666.go (commit da9c15e7) and
  MichielfromNL/DTSU666Emulator lib/DTSU666/src/DTSU666.cpp (the register table of the DTSU666
  user manual Solax publishes): holding registers, float32; Uab/Ubc/Uca at 0x2000/2/4 ("three
  phase line voltage"), Ua/Ub/Uc at 0x2006/8/A ("three phase phase voltage"), ImpEp 0x101E,
  ExpEp 0x1028. mbmd labels 0x2000.. VoltageL1..L3: the manual's table says they are the
  line-to-line voltages, and that is what we follow.
- volkszaehler/mbmd meters/rs485/sdm.go (commit 13a3019e, "Opcodes as defined by Eastron
  SDM630"): input registers, float32.
- volkszaehler/mbmd meters/rs485/carlogavazzi-em24.go (commit 054d4e18): the EM24-DIN's
  addresses (mbmd reads them with function 04; Carlo Gavazzi's table allows 03 and 04, we use
  03). mbmd reads import energy at 0x42, the resettable partial counter by CG's counter list;
  we read the total at 0x3E (Victron's dbus-cgwacs): left out of the comparison, noted in
  docs/modbus-meters.md.
- volkszaehler/mbmd meters/rs485/carlogavazzi-em24.go and evcc-io/evcc pull request #31736
  (fixing issue #31143): EM24 kWh(-) TOT at 0x5C "depends on the meter's measurement-system/
  application config and hardware variant"; where absent the meter answers exception 2.
"""

from __future__ import annotations

import re

import pytest

from drivers.modbus.reader import ModbusReader
from drivers.modbus.register_map import RegisterMap, builtin_models, load_builtin
from drivers.modbus.transports import ModbusTcpBus
from tests.drivers.modbus.test_catalog import sample_values
from tests.fakes.modbus_device import SimulatedMeter, serve_modbus_tcp

#: mbmd finder7m38.go: channel -> input register; all float32.
FINDER_7M38 = {
    "voltage_l1": 2500,
    "voltage_l2": 2502,
    "voltage_l3": 2504,
    "current_l1": 2516,
    "current_l2": 2518,
    "current_l3": 2520,
    "power_active_l1": 2530,
    "power_active_l2": 2532,
    "power_active_l3": 2534,
    "power_active": 2536,
    "power_reactive_l1": 2538,
    "power_reactive_l2": 2540,
    "power_reactive_l3": 2542,
    "power_reactive": 2544,
    "power_apparent_l1": 2546,
    "power_apparent_l2": 2548,
    "power_apparent_l3": 2550,
    "power_apparent": 2552,
    "power_factor_l1": 2554,
    "power_factor_l2": 2556,
    "power_factor_l3": 2558,
    "power_factor": 2560,
    "frequency": 2584,
    "energy_active_import": 2752,
    "energy_reactive_import": 2754,
    "energy_active_export": 2756,
    "energy_reactive_export": 2758,
}

#: DTSU666 manual table (MichielfromNL/DTSU666Emulator): channel -> holding register, float32.
DTSU666 = {
    "voltage_l1_l2": 0x2000,  # Uab
    "voltage_l2_l3": 0x2002,  # Ubc
    "voltage_l3_l1": 0x2004,  # Uca
    "voltage_l1": 0x2006,  # Ua
    "voltage_l2": 0x2008,  # Ub
    "voltage_l3": 0x200A,  # Uc
    "current_l1": 0x200C,
    "current_l2": 0x200E,
    "current_l3": 0x2010,
    "power_active": 0x2012,
    "power_active_l1": 0x2014,
    "power_active_l2": 0x2016,
    "power_active_l3": 0x2018,
    "power_reactive": 0x201A,
    "power_factor": 0x202A,
    "frequency": 0x2044,
    "energy_active_import": 0x101E,  # ImpEp (mbmd: Import)
    "energy_active_export": 0x1028,  # ExpEp (mbmd: Export)
}

#: mbmd sdm.go: channel -> input register; all float32.
SDM630 = {
    "voltage_l1": 0x0000,
    "voltage_l2": 0x0002,
    "voltage_l3": 0x0004,
    "current_l1": 0x0006,
    "current_l2": 0x0008,
    "current_l3": 0x000A,
    "power_active_l1": 0x000C,
    "power_active_l2": 0x000E,
    "power_active_l3": 0x0010,
    "power_active": 0x0034,
    "power_apparent": 0x0038,
    "power_reactive": 0x003C,
    "energy_active_import_l1": 0x015A,
    "energy_active_import_l2": 0x015C,
    "energy_active_import_l3": 0x015E,
    "energy_active_import": 0x0048,
    "energy_active_export": 0x004A,
    "energy_active_total": 0x0156,
    "power_factor_l1": 0x001E,
    "power_factor_l2": 0x0020,
    "power_factor_l3": 0x0022,
    "power_factor": 0x003E,
    "frequency": 0x0046,
}

#: mbmd carlogavazzi-em24.go: channel -> register (import energy: see the docstring).
EM24 = {
    "voltage_l1": 0x00,
    "voltage_l2": 0x02,
    "voltage_l3": 0x04,
    "current_l1": 0x0C,
    "current_l2": 0x0E,
    "current_l3": 0x10,
    "power_active_l1": 0x12,
    "power_active_l2": 0x14,
    "power_active_l3": 0x16,
    "power_active": 0x28,
    "power_factor_l1": 0x32,
    "power_factor_l2": 0x33,
    "power_factor_l3": 0x34,
    "power_factor": 0x35,
    "frequency": 0x37,
    "energy_active_import_l1": 0x46,
    "energy_active_import_l2": 0x48,
    "energy_active_import_l3": 0x4A,
    "energy_active_export": 0x5C,
}

#: mbmd carlogavazzi-em24.go / evcc #31736: the register some EM24 variants refuse.
EM24_EXPORT = ("holding", 0x5C, "energy_active_export")


@pytest.mark.parametrize(
    ("model", "table", "types", "facts"),
    [
        ("finder7m", "input", {"f32"}, FINDER_7M38),
        ("dtsu666", "holding", {"f32"}, DTSU666),
        ("sdm630", "input", {"f32"}, SDM630),
        ("em24", "holding", {"s32", "s16"}, EM24),  # mbmd: INT32 LSW first, INT16 PF and Hz
    ],
)
def test_addresses_and_types_match_the_public_tables(
    model: str, table: str, types: set[str], facts: dict[str, int]
) -> None:
    register_map = load_builtin(model)
    found = {
        channel: (register_map.register(channel).table, register_map.register(channel).address)
        for channel in facts
    }
    assert found == {channel: (table, address) for channel, address in facts.items()}
    assert {register_map.register(channel).type for channel in facts} == types


def test_dtsu666_phase_voltages_are_not_the_line_to_line_ones() -> None:
    register_map = load_builtin("dtsu666")
    assert register_map.register("voltage_l1").address == 0x2006
    assert register_map.register("voltage_l1_l2").address == 0x2000


def test_finder_energy_counters_are_floats() -> None:
    register_map = load_builtin("finder7m")
    for channel in ("energy_active_import", "energy_active_export"):
        assert register_map.register(channel).type == "f32", channel


async def _read_twice(
    register_map: RegisterMap, refused: set[tuple[str, int]]
) -> tuple[dict[str, float], dict[str, float], SimulatedMeter]:
    """Serve the map with every register in `refused` answering exception 2; read it twice
    with the real reader; the second read's requests only are left in `meter.served`."""
    values, _ = sample_values(register_map)
    meter = SimulatedMeter(register_map, unit_id=3, refused=refused)
    meter.set_values(values)
    async with (
        serve_modbus_tcp([meter]) as server,
        ModbusTcpBus("variant", "127.0.0.1", server.port, timeout_secs=2) as bus,
    ):
        reader = ModbusReader("variant", bus, 3, register_map, timeout_secs=2)
        first = await reader.read()
        seen = meter.requests_seen
        meter.served.clear()
        second = await reader.read()
        assert meter.requests_seen - seen == len(meter.served), "refused again"
    return first, second, meter


async def test_an_em24_without_export_energy_still_reads_and_is_not_asked_again() -> None:
    table, address, channel = EM24_EXPORT
    register_map = load_builtin("em24")
    assert register_map.register(channel).address == address
    first, second, meter = await _read_twice(register_map, {(table, address)})
    assert channel not in first and channel not in second
    assert "energy_active_import" in second and "power_active" in second
    assert all(not (a <= address < a + n) for t, a, n in meter.served if t == table)


#: Built-in maps with registers a variant may lack (sunspec: tests/drivers/modbus/test_sunspec*).
WITH_OPTIONAL = [
    m
    for m in builtin_models()
    if m != "sunspec" and any(r.optional for r in load_builtin(m).registers)
]


def test_the_maps_whose_variants_may_lack_registers_include_carlo_gavazzis() -> None:
    assert {"em24", "em24_e1", "em340"} <= set(WITH_OPTIONAL)


@pytest.mark.parametrize("model", WITH_OPTIONAL)
async def test_a_variant_lacking_every_optional_register_still_reads(model: str) -> None:
    """On every map: registers a variant may lack are optional; refused once, left out."""
    register_map = load_builtin(model)
    optional = [r for r in register_map.registers if r.optional]
    refused = {(r.table, r.address + i) for r in optional for i in range(r.words)}
    first, second, _ = await _read_twice(register_map, refused)
    required = {r.channel for r in register_map.registers if not r.optional}
    assert required <= set(first) and required <= set(second)
    assert not {r.channel for r in optional} & set(second)


#: A public source: "owner/repo path" (a repository file), a URL, or a named document.
_REPO_PATH = re.compile(r"^[\w.-]+/[\w.-]+ \S+")


@pytest.mark.parametrize("model", builtin_models())
def test_every_built_in_map_names_an_independent_public_source(model: str) -> None:
    sources = load_builtin(model).source
    assert sources, f"{model}.yaml has no source:"
    for source in sources:
        assert _REPO_PATH.match(source) or source.startswith("https://"), source
