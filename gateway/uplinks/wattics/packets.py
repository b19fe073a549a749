"""Wattics packets: one compact JSON line per sample, as the Data Push API documents them.

An electricity packet carries the meter's electricity channels under Wattics' keys
(`v_1`, `c_1`, `aP_1`, `pC_1`, ...); a value packet one channel of a sample as `value`. Both
are stamped in the site's local time with millis and offset (or UTC on the UTC route). Also
the basic-auth header and the reader of Wattics' answer to GET ?stream= (last packet time).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from collections.abc import Mapping
from datetime import tzinfo
from functools import lru_cache
from typing import Final, TypeGuard

from core.sample import Sample
from gateway.timefmt import local_iso8601_ms, parse_iso8601_ms

#: Wattics electricity key -> canonical channel (core.channels); units already match.
ELECTRICITY_FIELDS: Final[Mapping[str, str]] = {
    **{f"v_{n}": f"voltage_l{n}" for n in (1, 2, 3)},
    **{f"c_{n}": f"current_l{n}" for n in (1, 2, 3)},
    **{f"aP_{n}": f"power_active_l{n}" for n in (1, 2, 3)},
    **{f"rP_{n}": f"power_reactive_l{n}" for n in (1, 2, 3)},
    **{f"apP_{n}": f"power_apparent_l{n}" for n in (1, 2, 3)},
    "pC_1": "energy_active_import",
    "v_12": "voltage_l1_l2",
    "v_23": "voltage_l2_l3",
    "v_13": "voltage_l3_l1",
}

#: With energy_per_phase: pC_n carries each phase's import register instead of the total.
PER_PHASE_ENERGY: Final[Mapping[str, str]] = {
    f"pC_{n}": f"energy_active_import_l{n}" for n in (1, 2, 3)
}


#: "If you only have one total value for a data point you must use the first parameter to
#: transmit that value": a meter that reports a parameter only as a total (SunSpec and OBIS
#: meters report total power and current) sends it in that parameter's `_1` field. Wattics key
#: -> (the total channel, the per-phase channels whose absence makes the total "the one
#: value"). pC_1 already carries the total import unless energy_per_phase.
TOTAL_IN_FIRST: Final[Mapping[str, tuple[str, tuple[str, ...]]]] = {
    "aP_1": ("power_active", tuple(f"power_active_l{n}" for n in (1, 2, 3))),
    "rP_1": ("power_reactive", tuple(f"power_reactive_l{n}" for n in (1, 2, 3))),
    "apP_1": ("power_apparent", tuple(f"power_apparent_l{n}" for n in (1, 2, 3))),
    "c_1": ("current", tuple(f"current_l{n}" for n in (1, 2, 3))),
}
_PHASE_ENERGY_TOTAL: Final = (
    "energy_active_import",
    tuple(f"energy_active_import_l{n}" for n in (1, 2, 3)),
)

#: (Wattics key, channel, total fallback) in packet order; the fallback is (total channel,
#: per-phase channels) or None.
_Field = tuple[str, str, tuple[str, tuple[str, ...]] | None]


def _fields(energy_per_phase: bool) -> tuple[_Field, ...]:
    """(Wattics key, channel, total fallback) triples in packet order."""
    fields = dict(ELECTRICITY_FIELDS)
    fallbacks = dict(TOTAL_IN_FIRST)
    if energy_per_phase:
        del fields["pC_1"]
        fields.update(PER_PHASE_ENERGY)
        fallbacks["pC_1"] = _PHASE_ENERGY_TOTAL
    return tuple((key, channel, fallbacks.get(key)) for key, channel in fields.items())


_TOTAL_FIELDS: Final = _fields(False)
_PHASE_FIELDS: Final = _fields(True)


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _field_value(values: Mapping[str, object], field: _Field) -> object:
    """The value of one Wattics field: its channel, else the total when the meter has only
    the total of that parameter (TOTAL_IN_FIRST)."""
    _, channel, fallback = field
    value = values.get(channel)
    if fallback is not None and not _number(value):
        total, phases = fallback
        if not any(_number(values.get(phase)) for phase in phases):
            return values.get(total)
    return value


def build_packet(
    sample: Sample,
    stream_id: str,
    tz: str | tzinfo,
    *,
    energy_per_phase: bool = False,
    ts_ms: int | None = None,
) -> dict[str, object] | None:
    """The electricity packet for one sample, or None when it holds nothing Wattics takes.

    Missing, null and non-finite values are left out (the API accepts a subset). Energy is
    Wh as stored: by default the total import goes to pC_1, and a parameter the meter has
    only as a total goes to its first field (the API's rule for a single total).
    """
    values: dict[str, object] = {}
    for field in _PHASE_FIELDS if energy_per_phase else _TOTAL_FIELDS:
        value = _field_value(sample.values, field)
        if _number(value):
            values[field[0]] = value
    if not values:
        return None
    stamp = local_iso8601_ms(sample.ts_ms if ts_ms is None else ts_ms, tz)
    return {"id": stream_id, "tsISO8601": stamp, **values}


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def encode_packet(packet: Mapping[str, object]) -> bytes:
    """Compact JSON on one line (the API refuses line breaks); ASCII-only, no NaN."""
    return _ENCODER.encode(packet).encode()


@lru_cache(maxsize=1024)
def _head(stream_id: str) -> str:
    return '{"id":' + _ENCODER.encode(stream_id) + ',"tsISO8601":"'


def encode_sample(
    sample: Sample,
    stream_id: str,
    tz: str | tzinfo,
    *,
    energy_per_phase: bool = False,
    ts_ms: int | None = None,
) -> bytes | None:
    """Exactly `encode_packet(build_packet(...))` (a property test holds them equal), built
    without the intermediate dict: the uplink's hot path during catch-up.
    """
    values = sample.values
    parts: list[str] = []
    for field in _PHASE_FIELDS if energy_per_phase else _TOTAL_FIELDS:
        key, channel, fallback = field
        value = values.get(channel) if fallback is None else _field_value(values, field)
        if value.__class__ is float:
            if value - value == 0.0:  # finite (NaN and infinities give NaN)
                parts.append(f'"{key}":{float.__repr__(value)}')
        elif _number(value):
            parts.append(f'"{key}":{_ENCODER.encode(value)}')
    if not parts:
        return None
    stamp = local_iso8601_ms(sample.ts_ms if ts_ms is None else ts_ms, tz)
    return f'{_head(stream_id)}{stamp}",{",".join(parts)}}}'.encode()


def encode_value(
    sample: Sample,
    stream_id: str,
    channel: str,
    tz: str | tzinfo,
    *,
    scale: float = 1.0,
    ts_ms: int | None = None,
) -> bytes | None:
    """A single-value packet `{"id","tsISO8601","value"}` for one channel of a sample, or
    None when the sample lacks that channel (or it is not a finite number)."""
    value = sample.values.get(channel)
    if not _number(value):
        return None
    scaled = value * scale if scale != 1.0 else value
    if not _number(scaled):
        return None
    stamp = local_iso8601_ms(sample.ts_ms if ts_ms is None else ts_ms, tz)
    return encode_packet({"id": stream_id, "tsISO8601": stamp, "value": scaled})


def basic_auth(username: str, password: str) -> str:
    """The Authorization header value for HTTP basic auth (RFC 7617, UTF-8)."""
    if ":" in username:
        raise ValueError("a basic-auth username cannot contain ':'")
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def last_timestamp_ms(body: object, *, depth: int = 4) -> int | None:
    """Latest `tsISO8601` found anywhere in a JSON answer to GET ?stream= (shape UNKNOWN)."""
    found: list[int] = []

    def walk(node: object, level: int) -> None:
        if level > depth:
            return
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and key.lower() == "tsiso8601" and isinstance(value, str):
                    with contextlib.suppress(ValueError):
                        found.append(parse_iso8601_ms(value))
                else:
                    walk(value, level + 1)
        elif isinstance(node, list):
            for item in node[:1000]:
                walk(item, level + 1)

    walk(body, 0)
    return max(found) if found else None
