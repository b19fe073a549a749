"""Turn a finished MTS test into samples: the survey in `<meter>`, registers in its snapshot.

Survey periods keep their own (UTC) start times; all channels of one period become one sample.
Register values become one sample at the moment the meter was read (its clock corrected by
the offset MTS measured, else the connection end). Units are converted from what MTS says
(kWh -> Wh), unless the config gives a scale; a value whose unit does not fit its channel is
counted as a problem and left out rather than stored wrong by a factor of 1000.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Final

from core.channels import CHANNEL_UNITS
from core.sample import Sample
from gateway.sources.mts.config import MtsChannelConfig, MtsMeterConfig
from gateway.sources.mts.parse import TestStatus

#: Unit as MTS writes it (lower case) -> (canonical unit, factor).
UNITS: Final[dict[str, tuple[str, float]]] = {
    "wh": ("Wh", 1.0),
    "kwh": ("Wh", 1e3),
    "mwh": ("Wh", 1e6),
    "varh": ("varh", 1.0),
    "kvarh": ("varh", 1e3),
    "mvarh": ("varh", 1e6),
    "vah": ("VAh", 1.0),
    "kvah": ("VAh", 1e3),
    "mvah": ("VAh", 1e6),
    "w": ("W", 1.0),
    "kw": ("W", 1e3),
    "mw": ("W", 1e6),
    "var": ("var", 1.0),
    "kvar": ("var", 1e3),
    "mvar": ("var", 1e6),
    "va": ("VA", 1.0),
    "kva": ("VA", 1e3),
    "mva": ("VA", 1e6),
    "v": ("V", 1.0),
    "kv": ("V", 1e3),
    "a": ("A", 1.0),
    "ma": ("A", 1e-3),
    "hz": ("Hz", 1.0),
    "m3": ("m3", 1.0),
    "": ("", 1.0),
}

#: Energy unit of a period -> the rate it averages to.
_RATE_OF: Final = {"Wh": "W", "varh": "var", "VAh": "VA"}


@dataclass
class Ingest:
    survey: list[Sample] = field(default_factory=list)
    registers: Sample | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def samples(self) -> list[Sample]:
        return [*self.survey, *([self.registers] if self.registers else [])]


def _factor(units: str, target: MtsChannelConfig, period_secs: float) -> float | None:
    """Multiplier from MTS's value to the target channel, None when the units do not fit."""
    channel_unit = CHANNEL_UNITS[target.channel]
    if target.kind == "interval":
        if target.scale is not None:
            return target.scale * 3600.0 / period_secs
        known = UNITS.get(units.strip().lower())
        if known is None or _RATE_OF.get(known[0]) != channel_unit:
            return None
        return known[1] * 3600.0 / period_secs
    if target.scale is not None:
        return target.scale
    known = UNITS.get(units.strip().lower())
    if known is None or known[0] != channel_unit:
        return None
    return known[1]


def ingest(
    status: TestStatus,
    meter_id: str,
    registers_meter: str,
    meter: MtsMeterConfig,
    *,
    period_secs: float,
) -> Ingest:
    result = Ingest()
    periods: dict[int, dict[str, float]] = defaultdict(dict)
    survey_map = meter.survey_map()
    for channel in status.survey:
        target = survey_map.get(channel.name.lower())
        if target is None:
            continue  # a channel nobody asked for
        factor = _factor(channel.units, target, period_secs)
        if factor is None:
            result.problems.append(
                f"survey channel {channel.name!r}: unit {channel.units!r} does not fit "
                f"{target.channel} ({CHANNEL_UNITS[target.channel]})"
            )
            continue
        for ts_ms, value in channel.readings:
            periods[ts_ms][target.channel] = value * factor
    result.survey = [Sample(meter_id, ts, values) for ts, values in sorted(periods.items())]
    values: dict[str, float] = {}
    register_map = meter.register_map()
    for register in status.registers:
        target = register_map.get(register.name.lower())
        if target is None:
            continue
        if register.value is None:
            result.problems.append(f"register {register.name!r}: value is not a number")
            continue
        factor = _factor(register.units, target.model_copy(update={"kind": "cumulative"}), 1.0)
        if factor is None:
            result.problems.append(
                f"register {register.name!r}: unit {register.units!r} does not fit "
                f"{target.channel} ({CHANNEL_UNITS[target.channel]})"
            )
            continue
        values[target.channel] = register.value * factor
    if values:
        if status.read_ms is None:
            result.problems.append(
                "registers left out: the answer says not when the meter was read"
            )
        else:
            result.registers = Sample(registers_meter, status.read_ms, values)
    return result
