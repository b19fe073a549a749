"""What pydantic cannot check in `meters:` and `buses:`: relations between entries.

A meter naming a bus that exists, ids used once, a usable register map for a Modbus meter,
keys that only some bus types take, one meter per M-Bus channel. The config loader runs
`check_meters` after validation and reports each problem at its key's line, and
`resolve_maps` to validate every user register map once (drivers.modbus.maps).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from core.config_base import KeyPath
from core.config_errors import ConfigProblem
from drivers.config import MeterConfig, MeterSetup
from drivers.modbus.maps import inline_data, map_path, model_problem
from drivers.modbus.register_map import (
    MAP_SUFFIXES,
    RegisterMap,
    RegisterMapError,
    load_map_file,
    validate_map_data,
)
from drivers.serial.config import is_serial_bus

_SUFFIXES = " or ".join(MAP_SUFFIXES)


def check_meters(setup: MeterSetup) -> Iterator[tuple[KeyPath, str]]:
    """Relations between meters and buses that pydantic cannot see, by key path."""
    seen: set[str] = set()
    for index, meter in enumerate(setup.meters):
        if meter.id in seen:
            yield ("meters", index, "id"), f"meter id {meter.id!r} is used twice"
        seen.add(meter.id)
        if meter.bus not in setup.buses:
            yield ("meters", index, "bus"), f"no bus named {meter.bus!r} under buses"
        elif is_serial_bus(setup.buses[meter.bus]):
            # D0/P1/SML meters need no register map; serial_cross_check checks the rest
            if meter.register_map is not None:
                yield (
                    ("meters", index, "register_map"),
                    "register_map applies to Modbus meters only",
                )
        elif (problem := model_problem(meter)) is not None:
            key, message = problem
            yield ("meters", index, key) if key else ("meters", index), message
    yield from serial_cross_check(setup.buses, setup.meters)


def serial_cross_check(
    buses: Mapping[str, object], meters: Sequence[MeterConfig]
) -> Iterator[tuple[KeyPath, str]]:
    """Meter keys that only make sense on some bus types, and one meter per M-Bus channel."""
    channels: dict[tuple[str, int], str] = {}
    for index, meter in enumerate(meters):
        bus = buses.get(meter.bus)
        if bus is None:
            continue
        path: KeyPath = ("meters", index)
        if not is_serial_bus(bus):
            for key in ("address", "mbus_channel", "medium", "obis", "bcc"):
                if getattr(meter, key) is not None:
                    yield (*path, key), f"{key} applies to serial meters (D0, P1, SML) only"
            continue
        kind = bus.type
        if meter.model is not None:
            yield (*path, "model"), f"model applies to Modbus meters only, not on a {kind} bus"
        if "unit" in meter.model_fields_set:
            yield (*path, "unit"), f"unit applies to Modbus meters only, not on a {kind} bus"
        if kind != "iec62056-21":
            for key in ("address", "bcc"):
                if getattr(meter, key) is not None:
                    yield (*path, key), f"{key} applies to iec62056-21 (D0) buses only"
        elif meter.address is not None and getattr(bus, "mode", "readout") == "push":
            yield (*path, "address"), "address applies to readout mode (a push meter is not asked)"
        if kind != "dsmr-p1":
            for key in ("mbus_channel", "medium"):
                if getattr(meter, key) is not None:
                    yield (*path, key), f"{key} applies to dsmr-p1 buses only"
            continue
        if meter.medium is not None and meter.mbus_channel is None:
            yield (*path, "medium"), "medium needs mbus_channel (which M-Bus device to read)"
        if meter.mbus_channel is not None:
            key_ = (meter.bus, meter.mbus_channel)
            if key_ in channels:
                yield (
                    (*path, "mbus_channel"),
                    f"M-Bus channel {meter.mbus_channel} of bus {meter.bus!r} is already read "
                    f"by meter {channels[key_]!r}",
                )
            channels.setdefault(key_, meter.id)


def resolve_maps(
    config: MeterSetup, base_dir: Path
) -> tuple[list[tuple[KeyPath, str]], list[ConfigProblem]]:
    """Validate every meter's user map and keep the result on the meter.

    Returns (problems located in the config, by key path; problems inside map files, with
    their own file and line). A map file that cannot be read is a config problem: the path
    in the config is what is wrong.
    """
    in_config: list[tuple[KeyPath, str]] = []
    in_files: list[ConfigProblem] = []
    for index, meter in enumerate(config.meters):
        where: KeyPath = ("meters", index, "register_map")
        if meter.register_map is None or is_serial_bus(config.buses.get(meter.bus)):
            continue  # a serial meter's register_map is an error cross_check reports
        register_map: RegisterMap | None
        if isinstance(meter.register_map, str):
            path = map_path(meter.register_map, base_dir)
            if path.suffix not in MAP_SUFFIXES:  # never read /etc/shadow for a typo
                in_config.append((where, f"a register map file's name ends in {_SUFFIXES}"))
                continue
            try:
                register_map = load_map_file(path)
            except RegisterMapError as exc:
                unreadable = [p for p in exc.problems if p.line is None and not p.path]
                in_config += [(where, f"{path}: {p.message}") for p in unreadable]
                in_files += [p for p in exc.problems if p not in unreadable]
                continue
        else:
            register_map, found = validate_map_data(inline_data(meter))
            in_config += [((*where, *path), why) for path, why in found]
            if register_map is None or found:
                continue
        meter._resolved_map = register_map
    return in_config, in_files
