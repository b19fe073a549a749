"""Numbers and times as people read them on the status page (and in `meter-gateway status`)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

#: Units shown with a k/M prefix once large (W -> kW, Wh -> kWh -> MWh).
_SCALED = frozenset({"W", "var", "VA"})
_ENERGY = frozenset({"Wh", "varh"})


def human(value: float | None, unit: str) -> str:
    """`1.23 kW`, `45,678.9 kWh`, `230.1 V`; `-` when unknown. Energy stays in kWh (as meter
    displays and bills show it), power goes to kW and MW."""
    if value is None or not math.isfinite(value):
        return "-"
    if unit in _ENERGY:
        if abs(value) >= 1000:
            return f"{value / 1000:,.1f} k{unit}"
        return f"{value:,.0f} {unit}"
    if unit in _SCALED:
        for factor, prefix in ((1e6, "M"), (1e3, "k")):
            if abs(value) >= factor:
                return f"{value / factor:,.{2 if factor == 1e3 else 3}f} {prefix}{unit}"
        return f"{value:,.0f} {unit}"
    if unit == "":
        return f"{value:.3f}"
    if unit == "samples":
        return f"{value:,.0f}"
    return f"{value:,.2f} {unit}".rstrip()


def utc_text(ts_ms: int | None) -> str:
    """`2024-05-01 12:00:03Z`; `-` when unknown."""
    if ts_ms is None:
        return "-"
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def count_text(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def bytes_text(value: int | None) -> str:
    if value is None:
        return "-"
    for factor, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if value >= factor:
            return f"{value / factor:.1f} {unit}"
    return f"{value} B"
