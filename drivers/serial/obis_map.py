"""OBIS-coded readings (D0, DSMR P1, SML) -> canonical channels, with units converted.

The protocol drivers turn a telegram into `{code: Quantity}`; this module alone decides which
code feeds which channel (drivers/obis/default.yaml, plus a meter's `obis:` overrides) and
converts units, so the three protocols agree on every channel.

Invariants:
- Codes are compared in one normal form, "A-B:C.D.E". A reading without A-B (a plain D0
  readout line "1.8.0(...)") is electricity, "1-0". A code with a billing-period suffix F other
  than 255 is a historical value and never maps to a channel.
- A two-part code "C.D" in a reading (`32.7(233*V)`, as an L+G E350 prints it) is "C.D.0":
  the current value, as vzlogger reads it. Config and map files spell all three groups.
- A value is converted by its own unit; a unit that does not fit the channel leaves that
  channel out and is reported, never guessed. A value printed without a unit
  (`1.8.0(013925.5*)`) takes an override's unit, else the unit the OBIS code's quantity has by
  convention (`standard_unit`: kWh for active energy, kW for active power, V, A, Hz, kvarh,
  kvar, kVA), but only for standard electricity codes; any other is left out and reported.
- Arithmetic is exact (Decimal) until the final float, so "001234.567*kWh" is 1234567.0 Wh.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Final

import yaml

from core.channels import CHANNEL_UNITS

DEFAULT_MAP_FILE: Final = Path(__file__).parent / "obis" / "default.yaml"

_CODE = re.compile(
    r"^(?:(?P<a>\d{1,3})-(?P<b>\d{1,3}):)?"
    r"(?P<c>\d{1,3}|[CF])\.(?P<d>\d{1,3}|[CF])(?:\.(?P<e>\d{1,3}))?"
    r"(?:[*&](?P<f>\d{1,3}))?$"
)

#: unit as meters print it -> (canonical unit, factor). Case matters ("MWh" is not "mWh"),
#: so only spellings seen in the field are listed.
UNITS: Final[dict[str, tuple[str, Decimal]]] = {
    "Wh": ("Wh", Decimal(1)),
    "kWh": ("Wh", Decimal(1000)),
    "KWH": ("Wh", Decimal(1000)),
    "kwh": ("Wh", Decimal(1000)),
    "MWh": ("Wh", Decimal(1_000_000)),
    "GJ": ("Wh", Decimal(1_000_000_000) / Decimal(3600)),
    "MJ": ("Wh", Decimal(1_000_000) / Decimal(3600)),
    "W": ("W", Decimal(1)),
    "kW": ("W", Decimal(1000)),
    "KW": ("W", Decimal(1000)),
    "MW": ("W", Decimal(1_000_000)),
    "var": ("var", Decimal(1)),
    "kvar": ("var", Decimal(1000)),
    "kVAr": ("var", Decimal(1000)),
    "kVAR": ("var", Decimal(1000)),
    "varh": ("varh", Decimal(1)),
    "kvarh": ("varh", Decimal(1000)),
    "kVArh": ("varh", Decimal(1000)),
    "kVARh": ("varh", Decimal(1000)),
    "VA": ("VA", Decimal(1)),
    "kVA": ("VA", Decimal(1000)),
    "V": ("V", Decimal(1)),
    "kV": ("V", Decimal(1000)),
    "A": ("A", Decimal(1)),
    "mA": ("A", Decimal("0.001")),
    "Hz": ("Hz", Decimal(1)),
    "m3": ("m3", Decimal(1)),
    "m³": ("m3", Decimal(1)),
    "M3": ("m3", Decimal(1)),
    "l": ("m3", Decimal("0.001")),
}


class ObisMapError(ValueError):
    """A map file or override is malformed (a config problem, found at start-up)."""


@dataclass(frozen=True, slots=True)
class Quantity:
    """One value as the meter gave it: exact number and the unit it printed (None: none)."""

    value: Decimal
    unit: str | None = None


def normal_code(text: str, *, default_medium: str = "1-0", reduced: bool = False) -> str | None:
    """'1-0:1.8.0*255', '1.8.0', '1.8.0*255' -> '1-0:1.8.0'; None for a historical value
    (F other than 255) or text that is no OBIS code. `default_medium` fills a missing A-B;
    `reduced` (what a meter printed, not config) also takes "C.D" as "C.D.0"."""
    match = _CODE.match(text.strip())
    if match is None:
        return None
    if match["f"] is not None and int(match["f"]) != 255:
        return None
    if match["e"] is None and not (reduced and match["c"].isdigit() and match["d"].isdigit()):
        return None  # "F.F" (the error register), "C.1": not a reduced current-value code
    a_b = f"{int(match['a'])}-{int(match['b'])}" if match["a"] is not None else default_medium
    parts = [match["c"], match["d"], match["e"] or "0"]
    c, d, e = (p if p in ("C", "F") else str(int(p)) for p in parts)
    return f"{a_b}:{c}.{d}.{e}"


def config_code(text: str) -> str:
    """A code as written in config or a map file, checked; raises ObisMapError."""
    code = normal_code(str(text))
    if code is None:
        raise ObisMapError(
            f"{text!r} is not a current-value OBIS code (examples: 1.8.0, 1-0:16.7.0, "
            "0-1:24.2.1; a billing-period suffix other than *255 is not allowed)"
        )
    return code


#: OBIS C (quantity, IEC 62056-61; 21-40/41-60/61-80 are the same per phase L1/L2/L3) ->
#: (unit of D=7 instantaneous values, unit of D=8 energy registers), in the units meters print.
_QUANTITY_UNITS: Final[dict[int, tuple[str | None, str | None]]] = {
    1: ("kW", "kWh"),
    2: ("kW", "kWh"),
    15: ("kW", "kWh"),
    16: ("kW", "kWh"),
    **dict.fromkeys((3, 4, 5, 6, 7, 8), ("kvar", "kvarh")),
    9: ("kVA", None),
    10: ("kVA", None),
    11: ("A", None),
    12: ("V", None),
}


def standard_unit(code: str) -> str | None:
    """The unit an electricity code's quantity has by convention, for a value printed without
    one: "1-0:1.8.0" -> "kWh", "1-0:32.7.0" -> "V"; None where the code does not say."""
    match = _CODE.match(code)
    if match is None or match["a"] != "1" or not match["c"].isdigit() or not match["d"].isdigit():
        return None
    c, d = int(match["c"]), int(match["d"])
    if c == 14 and d == 7:
        return "Hz"
    if c == 91 and d == 7:
        return "A"  # neutral current
    base = c if c <= 20 else (c - 21) % 20 + 1 if c <= 80 else None
    if base is None or base not in _QUANTITY_UNITS or d not in (7, 8):
        return None
    return _QUANTITY_UNITS[base][d - 7]


def convert(quantity: Quantity, channel: str, assumed_unit: str | None = None) -> Decimal:
    """The value in `channel`'s unit; raises ValueError saying why it does not fit."""
    target = CHANNEL_UNITS[channel]
    unit = quantity.unit or assumed_unit
    if not unit:
        if target == "":
            return quantity.value
        raise ValueError(f"no unit given, {channel} needs {target}")
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}")
    base, factor = UNITS[unit]
    if base != target:
        raise ValueError(f"unit {unit} does not fit {channel} ({target})")
    return quantity.value * factor


@dataclass(frozen=True, slots=True)
class Term:
    code: str
    sign: int
    #: The unit to assume when the meter prints none (from an override).
    assumed_unit: str | None = None


#: One alternative: terms that must all be present; their signed sum is the channel's value.
Alternative = tuple[Term, ...]


@dataclass(frozen=True, slots=True)
class Override:
    """A meter's own rule for one code: feed `channel` (None: ignore the code)."""

    channel: str | None
    unit: str | None = None


@dataclass(frozen=True)
class ObisMap:
    """channel -> alternatives; `apply` turns a reading into canonical values."""

    rules: Mapping[str, tuple[Alternative, ...]]

    def apply(self, reading: Mapping[str, Quantity]) -> tuple[dict[str, float], list[str]]:
        """(channel values, problems). A problem leaves its channel out; the rest stands."""
        values: dict[str, float] = {}
        problems: list[str] = []
        for channel, alternatives in self.rules.items():
            for alternative in alternatives:
                if not all(term.code in reading for term in alternative):
                    continue
                total = Decimal(0)
                try:
                    for term in alternative:
                        assumed = term.assumed_unit or standard_unit(term.code)
                        converted = convert(reading[term.code], channel, assumed)
                        total += term.sign * converted
                except ValueError as exc:
                    problems.append(f"{channel} from {term.code}: {exc}")
                    break
                number = float(total)
                if not math.isfinite(number):
                    problems.append(f"{channel}: value out of range")
                    break
                values[channel] = number + 0.0  # normalise -0.0
                break
        return values, problems

    def with_overrides(self, overrides: Mapping[str, Override]) -> ObisMap:
        """This map with a meter's overrides: a code mapped to a channel becomes that channel's
        only source (several codes for one channel are added up); a code mapped to None is
        dropped from every rule."""
        if not overrides:
            return self
        ignored = {code for code, o in overrides.items() if o.channel is None}
        replaced: dict[str, list[Term]] = {}
        for code, override in overrides.items():
            if override.channel is not None:
                replaced.setdefault(override.channel, []).append(Term(code, 1, override.unit))
        rules: dict[str, tuple[Alternative, ...]] = {}
        for channel, alternatives in self.rules.items():
            if channel in replaced:
                continue
            kept = tuple(a for a in alternatives if not any(t.code in ignored for t in a))
            if kept:
                rules[channel] = kept
        for channel, terms in replaced.items():
            rules[channel] = (tuple(terms),)
        return ObisMap(rules)

    def codes(self) -> set[str]:
        return {t.code for alternatives in self.rules.values() for a in alternatives for t in a}


def parse_map(data: object, source: str) -> ObisMap:
    """A map file's content (channel -> list of alternatives of signed codes), checked."""
    if not isinstance(data, dict):
        raise ObisMapError(f"{source}: expected a mapping of channel -> alternatives")
    rules: dict[str, tuple[Alternative, ...]] = {}
    for channel, alternatives in data.items():
        if channel not in CHANNEL_UNITS:
            raise ObisMapError(f"{source}: unknown channel {channel!r}")
        if not isinstance(alternatives, list) or not alternatives:
            raise ObisMapError(f"{source}: {channel}: expected a list of code lists")
        parsed: list[Alternative] = []
        for alternative in alternatives:
            if not isinstance(alternative, list) or not alternative:
                raise ObisMapError(f"{source}: {channel}: each alternative is a list of codes")
            parsed.append(tuple(_term(str(code), source) for code in alternative))
        rules[channel] = tuple(parsed)
    return ObisMap(rules)


def _term(text: str, source: str) -> Term:
    sign = -1 if text.startswith("-") else 1
    try:
        return Term(config_code(text.removeprefix("-")), sign)
    except ObisMapError as exc:
        raise ObisMapError(f"{source}: {exc}") from None


@cache
def default_map() -> ObisMap:
    text = DEFAULT_MAP_FILE.read_text(encoding="utf-8")
    return parse_map(yaml.safe_load(text), str(DEFAULT_MAP_FILE))


def meter_map(overrides: Mapping[str, Override] | None) -> ObisMap:
    return default_map().with_overrides(overrides or {})


def known_units() -> Iterable[str]:
    return UNITS.keys()
