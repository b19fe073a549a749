"""What an installer runs at the cabinet: read one meter now, scan a line for units, print a map.

`meter-gateway read|scan|registers` are thin wrappers around the functions here. Each prints a
plain table on stdout, problems on stderr, and returns an exit code: 0 ok, 1 the device (or
line) failed, 2 the config or the command line is wrong. They use the same buses, readers and
register maps as the daemon, so what works here works in service.

How `scan` guesses the model (a heuristic; it says how sure it is):
1. Presence: a unit that answers anything (data, a Modbus exception, even a damaged frame) to
   a read of holding 40000 (the SunSpec marker) or input 0 (the first block of most DIN-rail
   meters) is there; two timeouts (or a TCP gateway's exception 10/11, "no such target")
   mean nobody is. So an empty address costs two timeouts.
2. SunSpec: "SunS" at holding 40000, 0 or 50000 -> `sunspec`.
3. Identity registers: for maps that list them (`identity:`, drivers/identity.py), each one is
   read on its own (once per unit, shared by maps naming the same block). A map all of whose
   identity registers hold one of its values is *identified* — certain, reported as such,
   and the plausibility fit is skipped. A map whose identity register answers with another
   value is *ruled out* (an SDM120 is never reported as an SDM630 because its layout fits);
   a timeout or exception rules nothing out (older firmware may lack the register).
4. Register maps (the built-in ones, then the user maps of the config's meters): every map's
   whole read plan is read and decoded; a map *fits* when every required channel answers and
   decodes to a plausible value for its quantity (voltages 0 or 80-1000 V, frequency 0 or
   40-70 Hz, |power factor| <= 1, energies >= 0, no NaN or denormal noise — what a wrong
   type or address decodes to). Fitting maps are ranked by how
   many non-zero plausible values they read (more evidence first). Related models share
   layouts (Eastron SDM630/SDM72/SDM120 answer at the same addresses), so the best fit is
   "likely" and the others that fit are listed too.
The table's `certainty` column says which: `identified` (identity registers or the SunSpec
marker), `likely` (best plausibility fit), `-` (answers, but no map fits).
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, TextIO

from core.channels import CHANNEL_UNITS
from drivers.base import MeterReadError
from drivers.factory import SUNSPEC_MODEL, build_bus, build_reader, bus_timeout
from drivers.modbus.bus import ModbusBus, ModbusExceptionError
from drivers.modbus.decode import GarbageValue, decode_scale_factor, decode_value
from drivers.modbus.identity import IdentityCheck
from drivers.modbus.maps import map_label, meter_register_map
from drivers.modbus.planner import plan_reads
from drivers.modbus.reader import ModbusReader
from drivers.modbus.register_map import RegisterMap, RegisterSpec, builtin_models, load_builtin
from drivers.modbus.transports import ModbusRtuBus
from drivers.serial.config import is_serial_bus
from gateway.cli.tables import render_table
from gateway.config.schema import Config

EXIT_OK: Final = 0
EXIT_DEVICE: Final = 1
EXIT_CONFIG: Final = 2

#: Where SunSpec devices put their "SunS" marker (holding registers, 0-based).
SUNSPEC_BASES: Final = (40000, 0, 50000)
SUNSPEC_MARKER: Final = (0x5375, 0x6E53)
#: Presence probes, in order: (table, address, count).
PRESENCE_PROBES: Final = (("holding", SUNSPEC_BASES[0], 2), ("input", 0, 2))
DEFAULT_SCAN_TIMEOUT_SECS: Final = 0.3
#: Exception codes of a Modbus TCP gateway for a unit that is not behind it.
GATEWAY_NO_TARGET: Final = frozenset({10, 11})


class CommandError(Exception):
    """The command line or config asks for something that does not exist (exit code 2)."""


def parse_units(text: str) -> list[int]:
    """'1-247', '5', '1,3,10-12' -> sorted unit ids (1..247; 0 is broadcast, never scanned)."""
    units: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise ValueError(f"{part!r} is not a unit id or a range like 1-247")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if not 1 <= first <= last <= 247:
            raise ValueError(f"{part.strip()!r}: unit ids are 1..247, low to high")
        units.update(range(first, last + 1))
    return sorted(units)


def format_units(units: Sequence[int]) -> str:
    """[1, 2, 3, 7] -> '1-3,7' (the inverse of parse_units)."""
    runs: list[list[int]] = []
    for unit in sorted(units):
        if runs and unit == runs[-1][1] + 1:
            runs[-1][1] = unit
        else:
            runs.append([unit, unit])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def format_value(value: float) -> str:
    """Enough digits for a float32, whole numbers (energy counters) in full."""
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:.7g}"


# --- read ----------------------------------------------------------------------------------


async def read_meter(
    config: Config, meter_id: str, *, raw: bool = False, out: TextIO = sys.stdout
) -> int:
    """One read of a configured meter, printed as channel / value / unit (+ raw registers)."""
    try:
        meter = config.meter(meter_id)
    except KeyError:
        known = ", ".join(m.id for m in config.meters) or "none"
        raise CommandError(f"no meter {meter_id!r} in the config (meters: {known})") from None
    bus_config = config.buses[meter.bus]
    if is_serial_bus(bus_config):  # D0, P1, SML: every OBIS code, the same readers
        from gateway.cli.serial_read import read_serial_meter

        return await read_serial_meter(config, meter, raw=raw, out=out)
    timeout = bus_timeout(config, meter.bus)
    async with build_bus(meter.bus, bus_config, timeout_secs=timeout) as bus:
        assert isinstance(bus, ModbusBus)  # every other bus type is Modbus
        reader = build_reader(meter, bus, bus_config)
        assert isinstance(reader, ModbusReader)
        started = time.monotonic()
        try:
            reading = await reader.read_detailed()
        except MeterReadError as exc:
            print(f"error: meter {meter_id}: {exc.kind}: {exc}{_hint(bus, exc)}", file=sys.stderr)
            return EXIT_DEVICE
        elapsed = time.monotonic() - started
    model = map_label(meter, reader.register_map)
    if reader.register_map is not None and reader.register_map.description and model == "sunspec":
        model += f" ({reader.register_map.description})"
    print(
        f"{meter.id}: unit {meter.unit} on {bus.describe()}, model {model}: "
        f"{len(reading.values)} value(s) in {len(reading.blocks)} request(s), "
        f"{elapsed * 1000:.0f} ms",
        file=out,
    )
    assert reader.register_map is not None  # known after a read, even when discovered
    rows = []
    for register in reader.register_map.registers:
        value = reading.values.get(register.channel)
        row = [
            register.channel,
            "n/a" if value is None else format_value(value),
            CHANNEL_UNITS.get(register.channel, ""),
        ]
        if raw:
            words = reading.words(register)
            row += [
                register.table,
                f"{register.address} (0x{register.address:04X})",
                register.type,
                "-" if words is None else " ".join(f"{w:04X}" for w in words),
            ]
        rows.append(row)
    headers = ["channel", "value", "unit"]
    if raw:
        headers += ["table", "address", "type", "raw"]
    print(render_table(headers, rows), file=out)
    if reader.absent:
        absent = ", ".join(sorted(reader.absent))
        print(f"left out (the device has no such register): {absent}", file=out)
    return EXIT_OK


def _hint(bus: ModbusBus, error: MeterReadError) -> str:
    if error.kind == "connection" and isinstance(bus, ModbusRtuBus):
        return " (is the adapter plugged in, and the gateway service stopped? It holds the port)"
    if error.kind == "timeout":
        return " (check unit id, baud rate, parity and A/B wiring)"
    return ""


# --- scan ----------------------------------------------------------------------------------


@dataclass
class Fit:
    model: str
    plausible: int
    nonzero: int
    total: int
    #: Channel -> why it does not fit (missing, implausible value).
    misfits: dict[str, str] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return not self.misfits


@dataclass
class Found:
    unit: int
    model: str | None
    evidence: str
    also: list[str] = field(default_factory=list)
    #: "identified" (the device said so), "likely" (best plausibility fit) or "-" (no model).
    certainty: str = "likely"


@dataclass
class Identities:
    """What the identity registers of one unit said about each candidate map."""

    #: model -> evidence ("holding 0xFC02 = 0x0070"), for maps whose every check matched.
    identified: dict[str, str] = field(default_factory=dict)
    #: model -> evidence, for maps an identity register contradicts.
    ruled_out: dict[str, str] = field(default_factory=dict)


async def scan_bus(
    config: Config,
    bus_name: str,
    units: Sequence[int],
    *,
    timeout_secs: float = DEFAULT_SCAN_TIMEOUT_SECS,
    models: Sequence[RegisterMap] | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Probe `units` on a configured bus; print what answers and which model it likely is."""
    if bus_name not in config.buses:
        known = ", ".join(config.buses) or "none"
        raise CommandError(f"no bus {bus_name!r} in the config (buses: {known})")
    if is_serial_bus(bus_config := config.buses[bus_name]):
        raise CommandError(
            f"bus {bus_name!r} is a {bus_config.type} bus: scan probes Modbus unit ids; a serial "
            "meter needs no address scan: configure it and try `meter-gateway read METER`"
        )
    candidates = list(models) if models is not None else _candidates(config)
    started = time.monotonic()
    found: list[Found] = []
    async with build_bus(bus_name, bus_config, timeout_secs=timeout_secs) as bus:
        assert isinstance(bus, ModbusBus)
        print(
            f"scanning {bus_name} ({bus.describe()}), units {format_units(units)}, "
            f"timeout {timeout_secs:g} s",
            file=out,
        )
        for unit in units:
            try:
                hit = await probe_unit(bus, unit, candidates, timeout_secs)
            except MeterReadError as exc:  # the line itself is gone: no point going on
                print(f"error: {exc}{_hint(bus, exc)}", file=sys.stderr)
                return EXIT_DEVICE
            if hit is not None:
                found.append(hit)
    rows = [
        [str(h.unit), h.model or "unknown", h.certainty, h.evidence + _also(h.also)] for h in found
    ]
    if rows:
        print(render_table(["unit", "model", "certainty", "evidence"], rows), file=out)
    print(
        f"answered: {len(found)} of {len(units)} unit(s), in {time.monotonic() - started:.1f} s",
        file=out,
    )
    return EXIT_OK if found else EXIT_DEVICE


def _also(models: Sequence[str]) -> str:
    return f"; also fits {', '.join(models)}" if models else ""


def _candidates(config: Config) -> list[RegisterMap]:
    """Every built-in map, then the config's own user maps (a site's odd meter is found too)."""
    candidates = [load_builtin(m) for m in builtin_models() if m != SUNSPEC_MODEL]
    for meter in config.meters:
        if meter.register_map is not None:
            user_map = meter_register_map(meter)
            if user_map is not None and all(user_map is not c for c in candidates):
                candidates.append(user_map)
    return candidates


async def probe_unit(
    bus: ModbusBus, unit: int, candidates: Sequence[RegisterMap], timeout: float
) -> Found | None:
    """None when nothing answers; else the likely model (see the module docstring)."""
    answered: dict[tuple[str, int, int], list[int] | None] = {}
    for probe in PRESENCE_PROBES:
        outcome = await _try(bus, unit, *probe, timeout=timeout)
        if outcome != "silent":
            answered[probe] = outcome if isinstance(outcome, list) else None
            break
    if not answered:
        return None
    for base in SUNSPEC_BASES:
        key = ("holding", base, 2)
        words = answered[key] if key in answered else await _words(bus, unit, *key, timeout=timeout)
        if words is not None and tuple(words) == SUNSPEC_MARKER:
            return Found(unit, "sunspec", f"SunS marker at holding {base}", certainty="identified")
    identities = await identify(bus, unit, candidates, timeout)
    if identities.identified:
        (model, evidence), *also = identities.identified.items()
        return Found(
            unit, model, f"identity {evidence}", [m for m, _ in also], certainty="identified"
        )
    remaining = [m for m in candidates if m.model not in identities.ruled_out]
    ruled_out = _ruled_out(identities)
    fits = [await fit_map(bus, unit, register_map, timeout) for register_map in remaining]
    good = sorted(
        (f for f in fits if f.fits and f.nonzero),
        key=lambda f: (-f.nonzero, -f.total, f.model),
    )
    if good:
        best, *others = good
        evidence = f"{best.plausible}/{best.total} values plausible, {best.nonzero} non-zero"
        return Found(unit, best.model, evidence + ruled_out, [f.model for f in others])
    closest = max(fits, key=lambda f: (f.plausible, f.nonzero), default=None)
    if closest is None or not closest.plausible:
        return Found(unit, None, "answers Modbus, but no known map fits" + ruled_out, [], "-")
    channel, why = next(iter(closest.misfits.items()))
    return Found(
        unit,
        None,
        f"answers Modbus; closest map {closest.model} "
        f"({closest.plausible}/{closest.total} plausible; {channel}: {why})" + ruled_out,
        certainty="-",
    )


def _ruled_out(identities: Identities) -> str:
    if not identities.ruled_out:
        return ""
    return "; not " + ", ".join(f"{m} ({why})" for m, why in identities.ruled_out.items())


async def identify(
    bus: ModbusBus, unit: int, candidates: Sequence[RegisterMap], timeout: float
) -> Identities:
    """Read every candidate's identity registers (each block once, on its own) and judge."""
    result = Identities()
    answers: dict[tuple[str, int, int], list[int] | None] = {}
    for register_map in candidates:
        if not register_map.identity:
            continue
        said: list[tuple[IdentityCheck, list[int]]] = []
        for check in register_map.identity:
            key = (check.table, check.address, check.count)
            if key not in answers:
                answers[key] = await _words(bus, unit, *key, timeout=timeout)
            words = answers[key]
            if words is not None and len(words) == check.count:
                said.append((check, words))
        evidence = ", ".join(check.describe(words) for check, words in said)
        if any(not check.matches(words) for check, words in said):
            result.ruled_out[register_map.model] = evidence
        elif said and len(said) == len(register_map.identity):
            result.identified[register_map.model] = evidence
    return result


async def fit_map(bus: ModbusBus, unit: int, register_map: RegisterMap, timeout: float) -> Fit:
    """Read a map's whole plan from `unit` and judge every value (no splitting, no retries)."""
    values = [r for r in register_map.registers if r.channel in CHANNEL_UNITS]
    fit = Fit(register_map.model, 0, 0, len(values))
    plan = plan_reads(
        register_map.registers_to_read(),
        max_count=register_map.max_registers_per_request,
        max_gap=register_map.max_gap,
        forbidden=register_map.forbidden,
    )
    words: dict[tuple[str, int], int] = {}
    for request in plan:
        block = await _words(
            bus, unit, request.table, request.address, request.count, timeout=timeout
        )
        for offset, word in enumerate(block or []):
            words[(request.table, request.address + offset)] = word
    for register in values:
        raw = [words.get((register.table, register.address + i)) for i in range(register.words)]
        if None in raw:
            why: str | None = "no answer"
        else:
            why = _implausible(register, [w for w in raw if w is not None], words)
        if why is None:
            fit.plausible += 1
            fit.nonzero += any(raw)
        elif not register.optional:
            fit.misfits[register.channel] = why
    return fit


#: (lowest, highest) plausible magnitude per quantity; 0 is always plausible.
_RANGES: Final[tuple[tuple[str, float, float], ...]] = (
    ("voltage", 80.0, 1000.0),
    ("frequency", 40.0, 70.0),
    ("power_factor", 0.0, 1.001),
    ("current", 0.0, 1e5),
    ("power", 0.0, 1e8),
    ("energy", 0.0, 1e15),
)


def _implausible(
    register: RegisterSpec, words: Sequence[int], image: dict[tuple[str, int], int]
) -> str | None:
    """Why `words` cannot be this register's quantity on a working meter, or None."""
    exponent = 0
    ref = register.scale_register
    if ref is not None:
        if (ref.table, ref.address) not in image:
            return "no scale factor"
        try:
            exponent = decode_scale_factor(image[(ref.table, ref.address)])
        except GarbageValue as exc:
            return str(exc)
    try:
        value = decode_value(words, register, exponent)
    except (GarbageValue, ValueError):
        return "not a number"
    if value == 0:
        return None
    if not math.isfinite(value) or abs(value) < 1e-6:
        return f"{value:g} is noise"
    if register.channel.startswith("energy") and value < 0:
        return f"negative energy {value:g}"
    for prefix, low, high in _RANGES:
        if register.channel.startswith(prefix):
            if not low <= abs(value) <= high:
                return f"{value:g} {CHANNEL_UNITS[register.channel]} out of range".rstrip()
            return None
    return None


async def _try(
    bus: ModbusBus, unit: int, table: str, address: int, count: int, *, timeout: float
) -> list[int] | str:
    """Words, or "answered" (exception, damaged frame), or "silent" (timeout)."""
    try:
        return await bus.read_registers(unit, table, address, count, timeout=timeout)
    except ModbusExceptionError as exc:
        # a TCP gateway answers for the units behind it: 10/11 mean nobody is there
        return "silent" if exc.code in GATEWAY_NO_TARGET else "answered"
    except MeterReadError as exc:
        if exc.kind == "timeout":
            return "silent"
        if exc.kind == "connection":
            raise
        return "answered"


async def _words(
    bus: ModbusBus, unit: int, table: str, address: int, count: int, *, timeout: float
) -> list[int] | None:
    outcome = await _try(bus, unit, table, address, count, timeout=timeout)
    return outcome if isinstance(outcome, list) else None


# --- registers -----------------------------------------------------------------------------


def print_map(model: str, *, out: TextIO = sys.stdout) -> int:
    """A built-in map (or a map file) as a table, with the read plan it gives."""
    from drivers.modbus.planner import plan_map
    from drivers.modbus.register_map import load_map_file

    if model.endswith((".yaml", ".yml")) or "/" in model:
        register_map = load_map_file(model)
    else:
        try:
            register_map = load_builtin(model)
        except KeyError as exc:
            raise CommandError(str(exc.args[0])) from None
    print(f"{register_map.model}: {register_map.description}".rstrip(": "), file=out)
    print(
        f"max {register_map.max_registers_per_request} registers per request, "
        f"gaps up to {register_map.max_gap} read through",
        file=out,
    )
    for hole in register_map.forbidden:
        print(f"never read: {hole.table} {hole.first}..{hole.last}", file=out)
    rows = []
    for r in register_map.registers:
        scale = format_value(r.scale)
        ref = getattr(r, "scale_register", None)
        if ref is not None:
            scale += f" x 10^({ref.table} {ref.address})"
        rows.append(
            [
                r.channel,
                r.table,
                str(r.address),
                f"0x{r.address:04X}",
                r.type,
                f"{r.word_order}/{r.byte_order}",
                scale,
                r.unit or "-",
                CHANNEL_UNITS.get(r.channel, ""),
                "yes" if r.optional else "",
            ]
        )
    headers = ["channel", "table", "address", "hex", "type", "words/bytes", "scale", "register"]
    headers += ["unit", "optional"]
    print(render_table(headers, rows), file=out)
    plan = plan_map(register_map)
    requests = ", ".join(f"{q.table} {q.address}+{q.count}" for q in plan)
    print(f"read plan: {len(plan)} request(s): {requests}", file=out)
    return EXIT_OK
