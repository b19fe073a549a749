"""Register maps are data: one YAML file per meter model, validated once at start-up.

Vendor knowledge (addresses, types, scales) lives in `drivers/modbus/registers/*.yaml`; protocol
knowledge (planning, decoding, transport) lives in code. The schema is documented in
`drivers/modbus/registers/SCHEMA.md`. A bad file is reported like a bad config file:
`file:line: key: why`, as a `RegisterMapError` (a ConfigError, so the CLI exits with code 2).
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core.channels import CHANNEL_UNITS, is_known_channel
from core.config_base import KeyPath
from core.config_errors import ConfigError, ConfigProblem
from core.yaml_lines import describe, parse_yaml, read_text
from drivers.modbus.identity import IdentityCheck

REGISTERS_DIR: Final = Path(__file__).with_name("registers")

Table = Literal["input", "holding"]
RegisterType = Literal["u16", "s16", "u32", "s32", "u64", "s64", "f32", "f64"]
Order = Literal["big", "little"]

#: Registers (16-bit words) each type occupies.
WORDS: Final[dict[str, int]] = {
    "u16": 1,
    "s16": 1,
    "u32": 2,
    "s32": 2,
    "u64": 4,
    "s64": 4,
    "f32": 2,
    "f64": 4,
}

MAX_ADDRESS: Final = 0xFFFF
#: Validation context flag: parse_map reports cross-entry problems itself, with file lines.
_REPORT_LATER: Final = "report_map_problems_later"
#: The Modbus limit for one read of holding/input registers (function codes 3 and 4).
PROTOCOL_MAX_REGISTERS: Final = 125
#: Channel names of the pseudo-registers that hold SunSpec-style scale factors start with this
#: (never a canonical channel, so a map file cannot use it).
SCALE_FACTOR_PREFIX: Final = "scale_factor@"
#: Registers' own units may carry an SI prefix (kWh) and a count (0.1 V): see `unit_multiplier`.
_PREFIXES: Final = {"": 1.0, "k": 1e3, "M": 1e6, "m": 1e-3}
_BASE_UNITS: Final = ("V", "A", "W", "var", "VA", "Hz", "Wh", "varh")
_UNIT_PATTERN: Final = re.compile(r"^(?:(?P<count>[0-9.eE+-]+)\s*)?(?P<unit>[A-Za-z%]*)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScaleRegister(_Strict):
    """Where a SunSpec-style scale factor lives: an s16 whose value v means x 10**v."""

    address: int = Field(ge=0, le=MAX_ADDRESS)
    table: Table


class RegisterSpec(_Strict):
    """One value of the meter, feeding one canonical channel."""

    channel: str
    #: 0-based protocol address (SDM630 "30001" is input register 0).
    address: int = Field(ge=0, le=MAX_ADDRESS)
    table: Table
    type: RegisterType
    word_order: Order = "big"
    byte_order: Order = "big"
    #: Multiplier applied after decoding, to reach the channel's unit (kWh -> Wh: 1000).
    scale: float = 1.0
    #: What one count of the register is ("kWh", "0.1 V", "%"); checked against `scale` and
    #: the channel's unit at load time (see `unit_problem`). Empty: not stated, not checked.
    unit: str = ""
    #: An optional channel that reads as garbage is left out instead of failing the read.
    optional: bool = False
    #: The value is further multiplied by 10**(this s16 register), read in the same pass.
    scale_register: ScaleRegister | None = None
    #: Raw content (the register(s) as one unsigned integer, after word/byte order) that means
    #: "not measured / not implemented" (SunSpec 0x8000, ABB 0xFFFFFFFF, ...): no value.
    unavailable: int | None = Field(default=None, ge=0)

    @field_validator("channel")
    @classmethod
    def _known_channel(cls, value: str) -> str:
        if not is_known_channel(value):
            raise ValueError(
                f"unknown channel {value!r} (known: {', '.join(sorted(CHANNEL_UNITS))})"
            )
        return value

    @field_validator("scale")
    @classmethod
    def _usable_scale(cls, value: float) -> float:
        if value == 0 or not math.isfinite(value):
            raise ValueError("scale must be a finite, non-zero number")
        return value

    @model_validator(mode="after")
    def _fits_address_space(self) -> RegisterSpec:
        if self.end - 1 > MAX_ADDRESS:
            raise ValueError(f"a {self.type} at {self.address} runs past address {MAX_ADDRESS}")
        if self.unavailable is not None and self.unavailable >= 1 << (16 * self.words):
            raise ValueError(f"unavailable={self.unavailable:#x} does not fit a {self.type}")
        return self

    @property
    def words(self) -> int:
        return WORDS[self.type]

    @property
    def end(self) -> int:
        """First address after this register (exclusive)."""
        return self.address + self.words

    def same_words(self, other: RegisterSpec) -> bool:
        """Do both read the very same value (one register feeding two channels)?"""
        return (self.table, self.address, self.type, self.word_order, self.byte_order) == (
            other.table,
            other.address,
            other.type,
            other.word_order,
            other.byte_order,
        )


def unit_problem(spec: RegisterSpec) -> str | None:
    """Why `spec.unit` contradicts its scale or channel (None: it does not).

    A register in kWh feeding a Wh channel with scale 1 would be off by 1000: the unit must be
    in the channel's base unit, and when it states a resolution ("0.1 V") or an SI prefix
    ("kWh"), `scale` must convert exactly that into the channel's unit. A bare base unit ("Hz")
    says nothing about resolution and accepts any scale.
    """
    if not spec.unit or is_scale_factor(spec):
        return None
    try:
        multiplier, base = unit_multiplier(spec.unit)
    except ValueError as exc:
        return str(exc)
    expected = CHANNEL_UNITS[spec.channel]
    if base != expected:
        return (
            f"unit {spec.unit!r} is in {base or 'no unit'}, but {spec.channel} "
            f"is in {expected or 'no unit'}"
        )
    bare = spec.unit.strip() == base
    if not bare and not math.isclose(multiplier, spec.scale, rel_tol=1e-9):
        return (
            f"unit {spec.unit!r} needs scale {multiplier:g} to reach {expected or 'a ratio'} "
            f"in {spec.channel}, not {spec.scale:g}"
        )
    return None


def unit_multiplier(unit: str) -> tuple[float, str]:
    """What one count of a register in `unit` is worth in a base unit: "0.1 kWh" -> (100, "Wh").

    `%` is a ratio in hundredths (power factor in percent); a bare number is a ratio too.
    """
    match = _UNIT_PATTERN.match(unit.strip())
    if match is None:
        raise ValueError(f"unit {unit!r} is not '<count> <unit>' (examples: V, 0.1 V, kWh, 0.01)")
    count_text, symbol = match.group("count"), match.group("unit")
    try:
        count = float(count_text) if count_text else 1.0
    except ValueError:
        raise ValueError(f"unit {unit!r}: {count_text!r} is not a number") from None
    if symbol == "%":
        return count * 0.01, ""
    if symbol == "":
        return count, ""
    for base in _BASE_UNITS:
        prefix = symbol.removesuffix(base)
        if symbol.endswith(base) and prefix in _PREFIXES:
            return count * _PREFIXES[prefix], base
    known = ", ".join(_BASE_UNITS)
    raise ValueError(f"unit {unit!r}: unknown unit {symbol!r} (known: {known}, with k/M/m, or %)")


def scale_factor_channel(ref: ScaleRegister) -> str:
    """The pseudo-channel name of a scale-factor register (never a canonical channel)."""
    return f"{SCALE_FACTOR_PREFIX}{ref.table}:{ref.address}"


def is_scale_factor(spec: RegisterSpec) -> bool:
    return spec.channel.startswith(SCALE_FACTOR_PREFIX)


def scale_factor_spec(ref: ScaleRegister, *, optional: bool = False) -> RegisterSpec:
    """The s16 register a reader must also read to scale the values that use `ref`.

    Built without validation: its channel is a pseudo-channel no map file may name.
    """
    return RegisterSpec.model_construct(
        channel=scale_factor_channel(ref),
        address=ref.address,
        table=ref.table,
        type="s16",
        optional=optional,
    )


class AddressRange(_Strict):
    """Addresses a device must never be asked for (reading them errors or has side effects)."""

    table: Table
    first: int = Field(ge=0, le=MAX_ADDRESS)
    #: Inclusive, as manufacturers write ranges.
    last: int = Field(ge=0, le=MAX_ADDRESS)

    @model_validator(mode="after")
    def _ordered(self) -> AddressRange:
        if self.last < self.first:
            raise ValueError("last must not be below first")
        return self

    def overlaps(self, table: str, start: int, end: int) -> bool:
        """Does [start, end) touch this range in `table`?"""
        return table == self.table and start <= self.last and end > self.first


class RegisterMap(_Strict):
    model: str = Field(min_length=1)
    description: str = ""
    #: Where the addresses come from: public sources someone can check ("owner/repo path",
    #: a URL, a document title). Every built-in map names at least one (a test checks it).
    source: tuple[str, ...] = ()
    max_registers_per_request: int = Field(default=PROTOCOL_MAX_REGISTERS, ge=1, le=125)
    #: Unneeded registers that may be read through to merge two blocks into one request.
    max_gap: int = Field(default=10, ge=0)
    forbidden: tuple[AddressRange, ...] = ()
    registers: tuple[RegisterSpec, ...] = Field(min_length=1)
    #: Registers where the device names its model (drivers/identity.py); read by `scan` only.
    identity: tuple[IdentityCheck, ...] = ()

    @field_validator("source", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> RegisterMap:
        if info.context and info.context.get(_REPORT_LATER):
            return self  # parse_map reports these itself, with file lines
        problems = [message for _, message in _map_problems(self)]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def channels(self) -> list[str]:
        return [register.channel for register in self.registers]

    def scale_registers(self) -> tuple[ScaleRegister, ...]:
        """Every scale-factor register some value needs, once each, in map order."""
        return tuple(dict.fromkeys(r.scale_register for r in self.registers if r.scale_register))

    def registers_to_read(self, channels: Iterable[str] | None = None) -> tuple[RegisterSpec, ...]:
        """What a read of `channels` (default: all) must fetch: their registers, then the
        scale-factor registers they need (as pseudo-registers, see `is_scale_factor`).

        A scale-factor register is optional when every value using it is: if the device lacks
        it, only those optional values are lost.
        """
        wanted = None if channels is None else set(channels)
        values = [r for r in self.registers if wanted is None or r.channel in wanted]
        if wanted is not None and len({r.channel for r in values}) != len(wanted):
            missing = wanted - {r.channel for r in values}
            raise KeyError(f"{self.model} has no channel(s) {sorted(missing)}")
        users: dict[ScaleRegister, list[RegisterSpec]] = {}
        for register in values:
            if register.scale_register is not None:
                users.setdefault(register.scale_register, []).append(register)
        factors = [
            scale_factor_spec(ref, optional=all(r.optional for r in members))
            for ref, members in users.items()
        ]
        return (*values, *factors)

    def register(self, channel: str) -> RegisterSpec:
        for register in self.registers:
            if register.channel == channel:
                return register
        raise KeyError(channel)


def _map_problems(register_map: RegisterMap) -> Iterator[tuple[KeyPath, str]]:
    """Relations between entries that single-field validation cannot see."""
    seen: set[str] = set()
    for index, register in enumerate(register_map.registers):
        here: KeyPath = ("registers", index)
        if register.channel in seen:
            yield (*here, "channel"), f"channel {register.channel!r} is mapped twice"
        seen.add(register.channel)
        problem = unit_problem(register)
        if problem is not None:
            yield (*here, "unit"), problem
        if register.words > register_map.max_registers_per_request:
            yield (
                (*here, "type"),
                (
                    f"a {register.type} does not fit in "
                    f"max_registers_per_request={register_map.max_registers_per_request}"
                ),
            )
        for hole in register_map.forbidden:
            if hole.overlaps(register.table, register.address, register.end):
                yield (
                    (*here, "address"),
                    (
                        f"{register.channel} at {register.address} lies in the forbidden "
                        f"{hole.table} range {hole.first}..{hole.last}"
                    ),
                )
    indexed = sorted(
        enumerate(register_map.registers), key=lambda item: (item[1].table, item[1].address)
    )
    for (_, before), (index, after) in itertools.pairwise(indexed):
        if before.table == after.table and after.address < before.end:
            if after.same_words(before):
                continue  # one value feeding two channels (a single-phase meter's total)
            yield (
                ("registers", index, "address"),
                (
                    f"{after.channel} at {after.address} overlaps {before.channel} "
                    f"at {before.address} ({before.type})"
                ),
            )
    yield from _scale_register_problems(register_map)
    for index, check in enumerate(register_map.identity):
        for hole in register_map.forbidden:
            if hole.overlaps(check.table, check.address, check.address + check.count):
                yield (
                    ("identity", index, "address"),
                    (
                        f"identity register {check.address} lies in the forbidden "
                        f"{hole.table} range {hole.first}..{hole.last}"
                    ),
                )


def _scale_register_problems(register_map: RegisterMap) -> Iterator[tuple[KeyPath, str]]:
    """A scale-factor register must be readable and must not be some value's register."""
    for index, register in enumerate(register_map.registers):
        ref = register.scale_register
        if ref is None:
            continue
        here: KeyPath = ("registers", index, "scale_register")
        for other in register_map.registers:
            if other.table == ref.table and other.address <= ref.address < other.end:
                yield here, f"scale register {ref.address} lies inside {other.channel}"
                break
        for hole in register_map.forbidden:
            if hole.overlaps(ref.table, ref.address, ref.address + 1):
                yield (
                    here,
                    (
                        f"scale register {ref.address} lies in the forbidden {hole.table} range "
                        f"{hole.first}..{hole.last}"
                    ),
                )


class RegisterMapError(ConfigError, ValueError):
    """A register map file is unreadable or invalid; lists every problem as file:line: key."""


def builtin_models() -> list[str]:
    """Names of the built-in maps (files in drivers/registers without .yaml), sorted."""
    return sorted(path.stem for path in REGISTERS_DIR.glob("*.yaml"))


@functools.cache
def load_builtin(model: str) -> RegisterMap:
    """The built-in map for `model`; loaded and validated once, then shared."""
    if model not in builtin_models():
        raise KeyError(f"no built-in register map {model!r} (have: {', '.join(builtin_models())})")
    register_map = load_map_file(REGISTERS_DIR / f"{model}.yaml")
    if register_map.model != model:
        raise RegisterMapError(
            [ConfigProblem(f"{model}.yaml", None, ("model",), "must equal the file name")]
        )
    return register_map


#: A file that is not a register map: the only thing said about it (its content is not ours).
NOT_A_MAP = "not a register map (a YAML mapping with a `registers:` list, SCHEMA.md)"
#: The names a register map file may have.
MAP_SUFFIXES = (".yaml", ".yml")


def load_map_file(path: str | Path) -> RegisterMap:
    """Parse and validate one map file; raise RegisterMapError naming file, line and key."""
    try:
        text = read_text(path)
    except ConfigError as exc:
        raise RegisterMapError(exc.problems) from exc
    return parse_map(text, str(path))


def parse_map(text: str, file: str) -> RegisterMap:
    try:
        document = parse_yaml(text, file)
    except ConfigError as exc:
        raise RegisterMapError(exc.problems) from None
    if not isinstance(document.data, dict) or "registers" not in document.data:
        # Not a map at all (a wrong path): say so, and never list what the file holds.
        raise RegisterMapError([ConfigProblem(file, None, (), NOT_A_MAP)])
    register_map, found = validate_map_data(document.data)
    problems = [*document.problems, *(document.problem(path, why) for path, why in found)]
    if register_map is None or problems:
        raise RegisterMapError(problems)
    return register_map


def validate_map_data(data: object) -> tuple[RegisterMap | None, list[tuple[KeyPath, str]]]:
    """Validate a map given as plain data (a file's content, or a map inline in the config).

    Returns the map (None when it does not even parse) and every problem, each with the key
    path inside `data` that it is about, so the caller can name its own file and line.
    """
    try:
        register_map = RegisterMap.model_validate(data, context={_REPORT_LATER: True})
    except ValidationError as exc:
        return None, [
            (_known_prefix(data, tuple(error["loc"])), _describe(data, error))
            for error in exc.errors(include_input=False, include_url=False)
        ]
    return register_map, list(_map_problems(register_map))


def _known_prefix(data: Any, loc: tuple[Any, ...]) -> KeyPath:
    """The part of a pydantic error location that exists in the document."""
    path: KeyPath = ()
    node = data
    for key in loc:
        in_mapping = isinstance(node, dict) and key in node
        in_list = isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node)
        if not (in_mapping or in_list):
            break
        node = node[key]
        path = (*path, key)
    return path


def _describe(data: Any, error: Any) -> str:
    path = _known_prefix(data, tuple(error["loc"]))
    return describe(error, path, unknown_key="see drivers/modbus/registers/SCHEMA.md")
