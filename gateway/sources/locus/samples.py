"""Locus data objects -> samples, and the checks of a meter's fields against dataavailable.

Pure functions: the meter worker (gateway.sources.locus.meter) does the calls and the storing.
A data object covers the interval [ts, ts + g) and becomes a sample stamped ts + g (see
gateway.sources.locus.plan for why). `interval` energy is added to the meter's counters in
time order; a negative interval value is not added (a counter never decreases) and is counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from core.channels import unit_of
from core.sample import Sample
from gateway.sources.locus.config import FieldKind, LocusMeterConfig, resolved_kind
from gateway.sources.locus.plan import parse_ts

#: Locus unit -> (canonical unit, factor). Locus writes reactive power "VAR".
UNITS: Mapping[str, tuple[str, float]] = {
    "W": ("W", 1.0),
    "kW": ("W", 1e3),
    "MW": ("W", 1e6),
    "Wh": ("Wh", 1.0),
    "kWh": ("Wh", 1e3),
    "MWh": ("Wh", 1e6),
    "VAR": ("var", 1.0),
    "var": ("var", 1.0),
    "kVAR": ("var", 1e3),
    "VARh": ("varh", 1.0),
    "varh": ("varh", 1.0),
    "kVARh": ("varh", 1e3),
    "VA": ("VA", 1.0),
    "kVA": ("VA", 1e3),
    "A": ("A", 1.0),
    "V": ("V", 1.0),
    "Hz": ("Hz", 1.0),
    "": ("", 1.0),
}


@dataclass(frozen=True)
class FieldPlan:
    short_name: str
    channel: str
    kind: FieldKind
    scale: float


class FieldProblem(Exception):
    """A configured field that this component does not have, or cannot be read as asked."""


def plan_fields(meter: LocusMeterConfig, available: Mapping[str, Any]) -> list[FieldPlan]:
    """Check every configured field against a dataavailable answer; FieldProblem lists all."""
    by_short: dict[str, dict[str, Any]] = {}
    for base in available.get("baseFields") or []:
        if not isinstance(base, dict):
            continue
        for aggregation in base.get("aggregations") or []:
            if isinstance(aggregation, dict) and isinstance(aggregation.get("shortName"), str):
                by_short[aggregation["shortName"]] = base
    problems: list[str] = []
    plans: list[FieldPlan] = []
    for short_name, spec in meter.fields.items():
        base = by_short.get(short_name)
        if base is None:
            known = ", ".join(sorted(by_short)) or "none"
            problems.append(f"field {short_name} does not exist for this component (has: {known})")
            continue
        granularities = base.get("granularities") or []
        if meter.granularity not in granularities:
            problems.append(
                f"field {short_name} has no {meter.granularity} data "
                f"(has: {', '.join(map(str, granularities))})"
            )
            continue
        scale = spec.scale
        if scale is None:
            unit = str(base.get("unit", ""))
            target = unit_of(spec.channel)
            converted = UNITS.get(unit)
            if converted is None or converted[0] != target:
                problems.append(
                    f"field {short_name} is in {unit!r}, channel {spec.channel} in {target!r}: "
                    "set `scale` to convert"
                )
                continue
            scale = converted[1]
        plans.append(FieldPlan(short_name, spec.channel, resolved_kind(short_name, spec), scale))
    if problems:
        raise FieldProblem("; ".join(problems))
    return plans


def offers_latest(plans: list[FieldPlan], available: Mapping[str, Any]) -> bool:
    """Does every planned field offer `gran=latest`? (The document's own dataavailable
    example lists no `latest`: then the meter is polled by interval.)"""
    grans: dict[str, list[object]] = {}
    for base in available.get("baseFields") or []:
        if not isinstance(base, dict):
            continue
        for aggregation in base.get("aggregations") or []:
            if isinstance(aggregation, dict) and isinstance(aggregation.get("shortName"), str):
                grans[aggregation["shortName"]] = list(base.get("granularities") or [])
    return all("latest" in grans.get(plan.short_name, []) for plan in plans)


def present_intervals(objects: Iterable[object], plans: list[FieldPlan]) -> set[int]:
    """Interval starts (epoch ms) that an answer has data for: an object with a number in
    one of the planned fields (Locus also lists intervals without data: `{"ts": ...}` only)."""
    found: set[int] = set()
    for item in objects:
        if not isinstance(item, dict) or not any(_number(item.get(p.short_name)) for p in plans):
            continue
        try:
            found.add(parse_ts(item.get("ts")))
        except ValueError:
            continue
    return found


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Built:
    samples: list[Sample]
    #: Counters after the last sample (unchanged when nothing was built).
    counters: dict[str, float]
    negative: int = 0
    ignored: int = 0


def build_samples(
    meter_id: str,
    objects: Iterable[object],
    plans: list[FieldPlan],
    *,
    counters: Mapping[str, float],
    step_ms: int,
    start_ms: int,
    end_ms: int,
) -> Built:
    """Samples of the complete intervals with start_ms <= ts and ts + step <= end_ms.

    Objects outside, unreadable ones and fields we did not ask for are ignored. `counters` are
    the interval counters at start_ms (channel -> Wh); they are carried into every sample.
    """
    rows: dict[int, dict[str, Any]] = {}
    ignored = 0
    for item in objects:
        try:
            if not isinstance(item, dict):
                raise ValueError("not an object")
            ts = parse_ts(item.get("ts"))
        except ValueError:
            ignored += 1
            continue
        if ts >= start_ms and ts + step_ms <= end_ms:
            rows[ts] = item
    running = dict(counters)
    built = Built([], running, ignored=ignored)
    for ts in sorted(rows):
        item = rows[ts]
        values: dict[str, float] = {}
        fresh = False
        for plan in plans:
            raw = item.get(plan.short_name)
            if not _number(raw):
                continue
            value = float(raw) * plan.scale
            fresh = True
            if plan.kind == "interval":
                if value < 0:
                    built.negative += 1
                    continue
                running[plan.channel] = running.get(plan.channel, 0.0) + value
            else:
                values[plan.channel] = value
        if not fresh:
            continue  # no data for this interval (yet): nothing to store
        for plan in plans:
            if plan.kind == "interval" and plan.channel in running:
                values[plan.channel] = running[plan.channel]
        built.samples.append(Sample(meter_id, ts + step_ms, values))
    return built


def interval_sums(
    objects: Iterable[object], plans: list[FieldPlan], start_ms: int, end_ms: int
) -> dict[str, float]:
    """Energy per interval channel of the objects with start_ms <= ts < end_ms (lifetime)."""
    sums = {plan.channel: 0.0 for plan in plans if plan.kind == "interval"}
    for item in objects:
        if not isinstance(item, dict):
            continue
        try:
            ts = parse_ts(item.get("ts"))
        except ValueError:
            continue
        if not start_ms <= ts < end_ms:
            continue
        for plan in plans:
            raw = item.get(plan.short_name)
            if plan.kind == "interval" and _number(raw) and raw > 0:
                sums[plan.channel] += float(raw) * plan.scale
    return sums
