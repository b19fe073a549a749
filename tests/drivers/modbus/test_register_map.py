"""Register maps: the built-in ones are valid, and a broken file is reported at its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.channels import unit_of
from drivers.modbus.register_map import (
    RegisterMap,
    RegisterMapError,
    builtin_models,
    load_builtin,
    load_map_file,
    unit_problem,
)
from tests.paths import REPO


def test_builtin_models_are_the_yaml_files() -> None:
    folder = REPO / "drivers" / "modbus" / "registers"
    assert builtin_models() == sorted(p.stem for p in folder.glob("*.yaml"))
    assert "sdm630" in builtin_models()


@pytest.mark.parametrize("model", builtin_models())
def test_builtin_map_feeds_known_channels_in_their_units(model: str) -> None:
    register_map = load_builtin(model)
    assert register_map.model == model
    for register in register_map.registers:
        unit_of(register.channel)  # raises for an unknown channel
        problem = unit_problem(register)
        assert problem is None, f"{model}: {register.channel}: {problem}"


def test_sdm630_addresses_follow_eastrons_protocol_document() -> None:
    sdm = load_builtin("sdm630")
    assert all(
        (r.table, r.type, r.word_order, r.byte_order) == ("input", "f32", "big", "big")
        for r in sdm.registers
    )
    expected = {
        "voltage_l1": 0x0000,
        "current_l3": 0x000A,
        "power_active_l1": 0x000C,
        "power_apparent_l1": 0x0012,
        "power_reactive_l1": 0x0018,
        "power_factor_l3": 0x0022,
        "power_active": 0x0034,
        "power_apparent": 0x0038,
        "power_reactive": 0x003C,
        "power_factor": 0x003E,
        "frequency": 0x0046,
        "energy_active_import": 0x0048,
        "energy_active_export": 0x004A,
        "energy_reactive_import": 0x004C,
        "energy_reactive_export": 0x004E,
        "voltage_l1_l2": 0x00C8,
        "voltage_l3_l1": 0x00CC,
        "current_n": 0x00E0,
        "energy_active_total": 0x0156,
        "energy_active_import_l3": 0x015E,
    }
    assert {channel: sdm.register(channel).address for channel in expected} == expected
    assert sdm.register("energy_active_import").scale == 1000


def test_load_builtin_is_loaded_once() -> None:
    assert load_builtin("sdm630") is load_builtin("sdm630")


def test_unknown_builtin_model_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="sdm630"):
        load_builtin("sdm999")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meter.yaml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """\
model: test
registers:
  - {channel: voltage_l1, address: 0, table: input, type: f32}
  - {channel: frequency, address: 10, table: holding, type: u16, scale: 0.01, unit: Hz}
"""


def test_a_user_map_loads_with_defaults(tmp_path: Path) -> None:
    register_map = load_map_file(_write(tmp_path, GOOD))
    assert isinstance(register_map, RegisterMap)
    assert register_map.max_registers_per_request == 125
    assert register_map.max_gap == 10
    assert register_map.register("frequency").word_order == "big"


@pytest.mark.parametrize(
    ("text", "where", "why"),
    [
        (
            GOOD.replace("type: u16,", "type: u16, tabel: input,"),
            ":4: registers[1].tabel:",
            "unknown key",
        ),
        (GOOD.replace("frequency", "frequence"), ":4: registers[1].channel:", "unknown channel"),
        (GOOD.replace("type: u16", "type: u12"), ":4: registers[1].type:", "'u16'"),
        (GOOD.replace(", table: input", ""), ":3: registers[0]:", "'table' is missing"),
        (GOOD.replace("scale: 0.01", "scale: 0"), ":4: registers[1].scale:", "non-zero"),
        (GOOD + "max_gap: -1\n", ":5: max_gap:", "greater than or equal to 0"),
        ("model: [x\n", ":2:", "not valid YAML"),
    ],
)
def test_a_mistake_names_file_line_and_key(tmp_path: Path, text: str, where: str, why: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(RegisterMapError) as caught:
        load_map_file(path)
    message = str(caught.value)
    assert f"{path}{where}" in message
    assert why in message
    assert isinstance(caught.value, ValueError)


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD + "max_gap: 4\nmax_gap: 40\n")
    with pytest.raises(RegisterMapError, match=r":6: max_gap: duplicate key"):
        load_map_file(path)


def test_overlapping_registers_are_refused(tmp_path: Path) -> None:
    text = GOOD.replace("address: 10, table: holding", "address: 1, table: input")
    with pytest.raises(
        RegisterMapError, match=r":4: registers\[1\]\.address: .*overlaps voltage_l1"
    ):
        load_map_file(_write(tmp_path, text))


def test_a_channel_mapped_twice_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("channel: frequency", "channel: voltage_l1"))
    with pytest.raises(RegisterMapError, match=r":4: registers\[1\]\.channel: .*mapped twice"):
        load_map_file(path)


def test_a_register_in_a_forbidden_range_is_refused(tmp_path: Path) -> None:
    text = GOOD + "forbidden:\n  - {table: holding, first: 8, last: 10}\n"
    with pytest.raises(RegisterMapError, match=r":4: registers\[1\]\.address: .*forbidden"):
        load_map_file(_write(tmp_path, text))


def test_a_forbidden_range_in_another_table_does_not_matter(tmp_path: Path) -> None:
    text = GOOD + "forbidden:\n  - {table: input, first: 8, last: 10}\n"
    assert len(load_map_file(_write(tmp_path, text)).forbidden) == 1


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RegisterMapError, match="cannot read"):
        load_map_file(tmp_path / "absent.yaml")


def test_programmatic_maps_are_checked_too() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        RegisterMap.model_validate(
            {
                "model": "x",
                "registers": [
                    {"channel": "voltage_l1", "address": 0, "table": "input", "type": "f32"},
                    {"channel": "voltage_l2", "address": 1, "table": "input", "type": "f32"},
                ],
            }
        )
