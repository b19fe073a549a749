"""Identity registers in register maps: the schema refuses what could never match, matching is
what the sources describe, and a simulated device answers them like the real one."""

from __future__ import annotations

import pytest

from drivers.modbus.identity import IdentityCheck
from drivers.modbus.register_map import (
    REGISTERS_DIR,
    RegisterMapError,
    builtin_models,
    load_builtin,
    parse_map,
)
from drivers.modbus.transports import ModbusTcpBus
from tests.fakes.modbus_device import SimulatedMeter, serve_modbus_tcp

MAP = """\
model: mine
forbidden:
  - {table: holding, first: 100, last: 199}
registers:
  - {channel: voltage_l1, address: 0, table: holding, type: u16, scale: 0.1, unit: 0.1 V}
identity:
  - {table: holding, address: 64514, type: u16, values: [0x0070]}
"""


def test_a_map_with_identity_registers_loads() -> None:
    (check,) = parse_map(MAP, "mine.yaml").identity
    assert (check.table, check.address, check.count, check.values) == ("holding", 64514, 1, (112,))


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        ("values: [0x0070]", "values: [0x10000]", "is not a u16 value"),
        ("type: u16, values: [0x0070]", "type: text, values: [SDM]", "needs `words`"),
        ("type: u16, values: [0x0070]", "type: text, words: 1, values: [SDM630]", "does not fit"),
        ("values: [0x0070]", "values: []", "at least 1"),
        ("address: 64514", "address: 150", "forbidden holding range 100..199"),
        ("type: u16,", "type: u16, size: 1,", "unknown key"),
    ],
)  # fmt: skip
def test_an_identity_that_could_never_match_is_refused_at_its_line(
    old: str, new: str, why: str
) -> None:
    assert old in MAP
    with pytest.raises(RegisterMapError) as caught:
        parse_map(MAP.replace(old, new), "mine.yaml")
    assert "mine.yaml:7: identity[0]" in str(caught.value)
    assert why in str(caught.value)


def test_integers_match_exactly_and_text_as_a_case_insensitive_substring() -> None:
    abb = IdentityCheck(table="holding", address=0x8960, type="u32", values=(0x42323320,))
    assert abb.matches([int.from_bytes(b"B2", "big"), int.from_bytes(b"3 ", "big")])  # "B23 "
    assert not abb.matches([0x4232, 0x3120])  # a B21
    name = IdentityCheck(table="holding", address=49, type="text", words=20, values=("EM3255",))
    assert name.matches(name.encode("Acti9 iem3255\x00"))
    assert not name.matches(name.encode("iEM3250"))
    assert name.encode("iEM3255")[:2] == [0x6945, 0x4D33]  # "iE", "M3": high byte first


@pytest.mark.parametrize("model", [m for m in builtin_models() if load_builtin(m).identity])
def test_every_identity_entry_names_its_source(model: str) -> None:
    """The schema asks for a source per identity entry (a claim nobody can check is worse than
    none): the file's identity comment says where the values come from."""
    content = (REGISTERS_DIR / f"{model}.yaml").read_text()
    comment = content.split("identity:", 1)[0].rsplit("# Identity:", 1)[-1]
    assert "Source" in comment, model


async def test_an_identity_word_inside_a_value_is_answered_only_to_a_read_of_it_alone() -> None:
    """Carlo Gavazzi meters answer their code at 0x000B read on its own, although 0x000A-0x000B
    is V L3-L1 in a block read: the simulator does the same, so neither read spoils the other."""
    em24 = load_builtin("em24")
    meter = SimulatedMeter(em24, unit_id=3)
    meter.set_values({"voltage_l3_l1": 6_553.6 + 400.0})  # 69536 x 0.1 V: high word 1
    async with (
        serve_modbus_tcp([meter]) as server,
        ModbusTcpBus("id", "127.0.0.1", server.port, timeout_secs=2) as bus,
    ):
        alone = await bus.read_registers(3, "holding", 0x000B, 1, timeout=2)
        block = await bus.read_registers(3, "holding", 0x000A, 2, timeout=2)
        meter.set_identity(0, 73)
        other = await bus.read_registers(3, "holding", 0x000B, 1, timeout=2)
    assert alone == [71] and other == [73]
    assert block == [69536 & 0xFFFF, 1]  # INT32, least significant word first
