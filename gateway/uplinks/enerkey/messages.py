"""EnerKey messages: one meter's hourly values as the JSON body and the URL it goes to.

The wire shape is documented in gateway.uplinks.enerkey.uplink's module docstring (EnerKey
does not publish paths or body, so config may rename each): `{"meterId": 4711, "values":
[{"timestamp": "2024-03-31T00:00:00Z", "value": 1234.567}, ...]}`.
"""

from __future__ import annotations

import json
from datetime import tzinfo
from urllib.parse import quote

import yarl

from gateway.timefmt import local_iso8601, utc_iso8601
from gateway.uplinks.enerkey import config as ekc


def state_key(stream: str) -> str:
    return f"stream:{stream}"


def convert(value_wh: float, meter: ekc.EnerKeyMeterConfig) -> float:
    """A stored counter value (Wh/varh) in the meter's EnerKey unit, rounded."""
    return round(value_wh / meter.divisor, meter.decimals)


def render_timestamp(ts_ms: int, timestamp_format: str, tz: tzinfo) -> str:
    return utc_iso8601(ts_ms) if timestamp_format == "utc" else local_iso8601(ts_ms, tz)


def build_body(
    config: ekc.EnerKeyConfig,
    meter_id: int | str,
    values: list[tuple[int, float]],
    tz: tzinfo,
) -> bytes:
    """The JSON message for one meter: (timestamp ms, value) pairs as documented above."""
    names = config.fields
    fmt = config.timestamp_format
    document = {
        names.meter_id: meter_id,
        names.values: [
            {names.timestamp: render_timestamp(ts, fmt, tz), names.value: value}
            for ts, value in values
        ],
    }
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def push_url(config: ekc.EnerKeyConfig, meter: ekc.EnerKeyMeterConfig) -> yarl.URL:
    template = config.consumption_path if meter.mode == "consumption" else config.cumulative_path
    path = template.format(meter_id=quote(str(meter.meter_id), safe=""))
    return yarl.URL(config.base_url + path, encoded=True)
