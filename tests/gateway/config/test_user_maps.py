"""User register maps (`register_map:` a file or inline): validated at config load with
file:line:key errors, and read with by the daemon, `meter-gateway read/registers/scan` and HA
discovery alike. The meters are pymodbus simulators built from the same user map."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from core.config_errors import ConfigError
from core.health import Health
from drivers.modbus.maps import meter_register_map
from drivers.modbus.register_map import RegisterMap, parse_map
from drivers.simulator import SimulatedMeter, serve_modbus_tcp
from gateway.cli.commissioning import scan_bus
from gateway.config.loader import load_config, parse_config
from gateway.config.schema import Config
from gateway.daemon import DB_FILE, Daemon
from gateway.ops.discovery import describe_meters
from gateway.store.database import Store
from tests.helpers.eventually import eventually
from tests.paths import REPO

#: A sub-meter no built-in map covers: holding registers, scaled integers, a little-endian s32.
PUMP_MAP = """\
# heat pump sub-meter (a user map; schema: drivers/modbus/registers/SCHEMA.md)
model: pump-meter
description: Heat pump sub-meter
max_gap: 4
registers:
  - {channel: voltage_l1, address: 0, table: holding, type: u16, scale: 0.1, unit: 0.1 V}
  - {channel: frequency, address: 1, table: holding, type: u16, scale: 0.01, unit: 0.01 Hz}
  - {channel: power_active, address: 10, table: holding, type: s32, word_order: little}
  - {channel: energy_active_import, address: 20, table: holding, type: u32, scale: 100,
     unit: 0.1 kWh}
"""
PUMP_VALUES = {
    "voltage_l1": 231.4,
    "frequency": 50.02,
    "power_active": -1234.0,
    "energy_active_import": 98_700.0,
}
#: The same meter family's single-phase sibling, given inline: energy at 100 as a float.
INLINE_METER = """\
  - id: sibling
    bus: plant
    unit: 2
    interval_secs: 200ms
    register_map:
      model: sibling-meter
      registers:
        - {channel: power_active, address: 100, table: input, type: f32, unit: kW, scale: 1000}
        - {channel: energy_active_import, address: 102, table: input, type: f32, unit: kWh,
           scale: 1000}
"""
SIBLING_VALUES = {"power_active": 1500.0, "energy_active_import": 4_250_500.0}


def site(port: int = 502, meters: str = "") -> str:
    return f"""\
gateway:
  id: site-1
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: {port}, timeout_secs: 0.5}}
  p1: {{type: dsmr-p1, port: /dev/ttyUSB9}}
meters:
  - id: incomer
    bus: plant
    model: sdm630
{meters}"""


def line_of(text: str, fragment: str) -> int:
    """1-based line of the only line containing `fragment`."""
    hits = [n for n, line in enumerate(text.splitlines(), 1) if fragment in line]
    assert len(hits) == 1, (fragment, hits)
    return hits[0]


def problems(text: str, file: str = "site.yaml") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, file, {})
    return [str(p) for p in caught.value.problems]


# --- validation ---------------------------------------------------------------------------


def test_an_inline_map_error_names_the_config_line_and_the_key_path() -> None:
    text = site(
        meters=INLINE_METER.replace("100, table: input, type: f32", "100, table: input, type: f33"),
    )
    assert problems(text) == [
        f"site.yaml:{line_of(text, 'f33')}: meters[1].register_map.registers[0].type: "
        "Input should be 'u16', 's16', 'u32', 's32', 'u64', 's64', 'f32' or 'f64'"
    ]


def test_inline_map_relations_are_checked_each_at_its_own_line() -> None:
    text = site(
        meters=INLINE_METER.replace("address: 102", "address: 101").replace(
            "unit: kWh,\n           scale: 1000", "unit: kWh,\n           scale: 1"
        )
    )
    energy = line_of(text, "address: 101")
    assert problems(text) == [
        f"site.yaml:{energy}: meters[1].register_map.registers[1].address: "
        "energy_active_import at 101 overlaps power_active at 100 (f32)",
        f"site.yaml:{energy}: meters[1].register_map.registers[1].unit: "
        "unit 'kWh' needs scale 1000 to reach Wh in energy_active_import, not 1",
    ]


def test_a_map_file_error_names_the_map_file_and_its_own_line(tmp_path: Path) -> None:
    bad = PUMP_MAP.replace("channel: frequency", "channel: frequncy")
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "pump.yaml").write_text(bad)
    config = tmp_path / "site.yaml"
    config.write_text(site(meters="  - {id: pump, bus: plant, register_map: maps/pump.yaml}\n"))
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    (problem,) = caught.value.problems
    assert problem.file == str(tmp_path / "maps" / "pump.yaml")
    assert problem.line == line_of(bad, "frequncy")
    assert str(problem).startswith(
        f"{tmp_path}/maps/pump.yaml:{problem.line}: registers[1].channel: "
        "unknown channel 'frequncy' (known: "
    )


def test_a_missing_map_file_is_reported_at_the_config_line_that_names_it(
    tmp_path: Path,
) -> None:
    text = site(meters="  - id: pump\n    bus: plant\n    register_map: maps/nope.yaml\n")
    assert problems(text, str(tmp_path / "site.yaml")) == [
        f"{tmp_path}/site.yaml:{line_of(text, 'nope')}: meters[1].register_map: "
        f"{tmp_path}/maps/nope.yaml: cannot read: No such file or directory"
    ]


def test_model_and_register_map_are_one_choice_and_only_for_modbus_meters() -> None:
    text = site(
        meters=(
            "  - {id: both, bus: plant, model: sdm630, register_map: {registers: []}}\n"
            "  - {id: path, bus: plant, model: maps/pump.yaml}\n"
            "  - {id: none, bus: plant}\n"
            "  - {id: smart, bus: p1, register_map: maps/pump.yaml}\n"
        )
    )
    assert problems(text) == [
        f"site.yaml:{line_of(text, 'id: both')}: meters[1].model: give either model (a built-in "
        "map) or register_map, not both",
        f"site.yaml:{line_of(text, 'id: both')}: meters[1].register_map.registers: "
        "Tuple should have at least 1 item after validation, not 0",
        f"site.yaml:{line_of(text, 'id: path')}: meters[2].model: 'maps/pump.yaml' is not a "
        "built-in model; name a map file with `register_map: maps/pump.yaml` instead",
        f"site.yaml:{line_of(text, 'id: none')}: meters[3]: required key 'model' is missing "
        "(a built-in map; or register_map: your own)",
        f"site.yaml:{line_of(text, 'id: smart')}: meters[4].register_map: register_map "
        "applies to Modbus meters only",
    ]


def test_a_relative_map_path_is_taken_from_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc" / "maps").mkdir(parents=True)
    (tmp_path / "etc" / "maps" / "pump.yaml").write_text(PUMP_MAP)
    (tmp_path / "etc" / "site.yaml").write_text(
        site(meters="  - {id: pump, bus: plant, register_map: maps/pump.yaml}\n" + INLINE_METER)
    )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    config = load_config(tmp_path / "etc" / "site.yaml")
    pump = meter_register_map(config.meter("pump"))
    sibling = meter_register_map(config.meter("sibling"))
    assert pump == parse_map(PUMP_MAP, "pump.yaml")
    assert sibling is not None and sibling.model == "sibling-meter"
    assert sibling.channels() == ["power_active", "energy_active_import"]


# --- reading ------------------------------------------------------------------------------


@pytest.fixture
async def pump_site(tmp_path: Path) -> AsyncIterator[tuple[Path, Config]]:
    """(config path, config): units 1 (file map) and 2 (inline map) on one simulated line."""
    pump = SimulatedMeter(parse_map(PUMP_MAP, "pump.yaml"), unit_id=1)
    pump.set_values(PUMP_VALUES)
    inline = yaml.safe_load(INLINE_METER)[0]["register_map"]
    sibling = SimulatedMeter(RegisterMap.model_validate(inline), unit_id=2)
    sibling.set_values(SIBLING_VALUES)
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "pump.yaml").write_text(PUMP_MAP)
    config_path = tmp_path / "site.yaml"
    async with serve_modbus_tcp([pump, sibling]) as server:
        text = site(
            server.port,
            "  - {id: pump, bus: plant, register_map: maps/pump.yaml, interval_secs: 200ms}\n"
            + INLINE_METER,
        )
        text = text.replace("  - id: incomer\n    bus: plant\n    model: sdm630\n", "")
        # clock_check none: the stored values are the point here, not the host's NTP state
        text = text.replace(
            "  id: site-1\n", f'  id: site-1\n  clock_check: none\n  data_dir: "{tmp_path}"\n'
        )
        config_path.write_text(text)
        yield config_path, load_config(config_path)


async def test_the_daemon_stores_values_read_through_a_file_map_and_an_inline_map(
    pump_site: tuple[Path, Config],
) -> None:
    _, config = pump_site
    health = Health()
    daemon = Daemon(config, health=health)
    task = asyncio.get_running_loop().create_task(daemon.run(), name="daemon")

    def both_read() -> bool:
        if health.meter("pump").reads and health.meter("sibling").reads:
            return True
        assert not task.done()
        return False

    try:
        await eventually(both_read, timeout=10, interval=0.05, what="a read of both meters")
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)
    with Store(Path(config.gateway.data_dir) / DB_FILE) as store:
        pump = store.read("pump", 0, limit=1)[0].sample.values
        sibling = store.read("sibling", 0, limit=1)[0].sample.values
    assert pump == pytest.approx(PUMP_VALUES)
    assert pump.keys() == PUMP_VALUES.keys()
    assert sibling == SIBLING_VALUES


async def cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_read_command_uses_the_user_map(pump_site: tuple[Path, Config]) -> None:
    config_path, _ = pump_site
    code, out, err = await cli("read", "pump", "-c", str(config_path), "--raw")
    assert code == 0, err
    header, *table = out.splitlines()
    assert "model pump-meter (map file maps/pump.yaml): 4 value(s) in 3 request(s)" in header
    rows = {line.split()[0]: line.split()[1:] for line in table[1:]}
    assert rows["voltage_l1"] == ["231.4", "V", "holding", "0", "(0x0000)", "u16", "090A"]
    assert rows["power_active"][:2] == ["-1234", "W"]
    assert rows["power_active"][-2:] == ["FB2E", "FFFF"]  # little word order, as on the wire
    assert rows["energy_active_import"][:2] == ["98700", "Wh"]
    code, out, err = await cli("read", "sibling", "-c", str(config_path))
    assert code == 0, err
    assert "model sibling-meter (inline map)" in out.splitlines()[0]
    assert out.splitlines()[2].split() == ["power_active", "1500", "W"]


async def test_registers_command_prints_a_user_map_file_or_its_errors(tmp_path: Path) -> None:
    good = tmp_path / "pump.yaml"
    good.write_text(PUMP_MAP)
    code, out, err = await cli("registers", str(good))
    assert code == 0, err
    assert out.splitlines()[0] == "pump-meter: Heat pump sub-meter"
    assert "read plan: 3 request(s): holding 0+2, holding 10+2, holding 20+2" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(PUMP_MAP.replace("type: s32", "type: s31"))
    code, out, err = await cli("registers", str(bad))
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {bad}:{line_of(PUMP_MAP, 'type: s32')}: registers[2].type: ")


async def test_scan_recognises_a_meter_by_the_configs_user_map(
    pump_site: tuple[Path, Config],
) -> None:
    _, config = pump_site
    out = io.StringIO()
    assert await scan_bus(config, "plant", [1], timeout_secs=0.3, out=out) == 0
    row = next(line for line in out.getvalue().splitlines() if line.startswith("1 "))
    assert row.split()[1] == "pump-meter"


def test_discovery_describes_a_meter_by_its_user_map(tmp_path: Path) -> None:
    (tmp_path / "pump.yaml").write_text(PUMP_MAP)
    text = site(meters="  - {id: pump, bus: plant, register_map: pump.yaml}\n" + INLINE_METER)
    config = parse_config(text, str(tmp_path / "site.yaml"), {})
    _, pump, sibling = describe_meters(config.meters, config.buses)
    assert pump.channels == frozenset(PUMP_VALUES)
    assert (pump.model_id, pump.model) == ("pump-meter", "Heat pump sub-meter")
    assert sibling.channels == frozenset(SIBLING_VALUES)
    assert (sibling.model_id, sibling.model) == ("sibling-meter", "sibling-meter")


def test_the_single_phase_finder_7m24_as_a_user_map_is_valid() -> None:
    """finder7m.yaml tells 7M.24 owners to copy it without the _l2/_l3 entries."""
    source = (REPO / "drivers" / "modbus" / "registers" / "finder7m.yaml").read_text()
    lines = [line for line in source.splitlines() if "_l2" not in line and "_l3" not in line]
    single = parse_map("\n".join(lines).replace("model: finder7m", "model: finder7m24"), "7m24")
    assert isinstance(single, RegisterMap)
    assert "voltage_l1" in single.channels() and "voltage_l2" not in single.channels()
