"""EnerKey messages: one meter's hourly values as the JSON body and the URL it goes to.

The wire shape is documented in gateway.uplinks.enerkey.uplink's module docstring (EnerKey
does not publish paths or body, so config may rename each): `{"meterId": 4711, "values":
[{"timestamp": "2024-03-31T00:00:00Z", "value": 1234.567}, ...]}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import tzinfo
from urllib.parse import quote

import yarl

from gateway.net.policy import Outcome, Verdict, is_web_page, not_json
from gateway.timefmt import HOUR_MS, local_iso8601, utc_iso8601
from gateway.uplinks.enerkey import config as ekc
from gateway.uplinks.enerkey.hourly import HourReading


def state_key(stream: str) -> str:
    return f"stream:{stream}"


def convert(value_wh: float, meter: ekc.EnerKeyMeterConfig) -> float:
    """A stored counter value (Wh/varh) in the meter's EnerKey unit, rounded."""
    return round(value_wh / meter.divisor, meter.decimals)


@dataclass(frozen=True, slots=True)
class HourValue:
    """What one decided boundary sends (None: nothing), and what a human should hear."""

    value: float | None
    alert: str | None = None
    #: Set when an hour's consumption cannot be told (alerted and counted as missing).
    left_out: str | None = None


def hour_value(
    target: ekc.EnerKeyMeterConfig,
    reading: HourReading,
    last_hour_ms: int | None,
    last_value: float | None,
) -> HourValue:
    """Cumulative: the reading (a new series or a counter going down is sent as read, with an
    alert). Consumption: the difference to the hour before, or nothing without it."""
    value = convert(reading.value, target)
    previous = None
    if last_value is not None and last_hour_ms is not None:
        previous = convert(last_value, target)
    when = utc_iso8601(reading.hour_ms)
    if target.mode == "cumulative":
        if reading.series_break is not None:
            before = "none" if previous is None else f"{previous:g}"
            return HourValue(
                value,
                f"{reading.series_break} in the hour ending {when} ({before} -> {value:g} "
                f"{target.unit}): a new counter series starts; sent as read (record the meter "
                "change in EnerKey)",
            )
        if previous is not None and value < previous:
            text = f"counter went down at {when} ({previous:g} -> {value:g} {target.unit})"
            return HourValue(value, f"{text}; sent as read")
        return HourValue(value)
    if previous is None or last_hour_ms != reading.hour_ms - HOUR_MS:
        return HourValue(None)  # the hour before was a gap (reported) or the first reading
    change = f"({previous:g} -> {value:g} {target.unit}"
    if reading.series_break is not None:
        why = f"{reading.series_break} in the hour ending {when}"
        return HourValue(None, left_out=f"{why} {change}, flagged by the gateway)")
    consumption = round(value - previous, target.decimals)
    if consumption < 0:
        return HourValue(None, left_out=f"counter went down in the hour ending {when} {change})")
    return HourValue(consumption)


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


def check_answer(verdict: Verdict, content_type: str, body: bytes) -> Verdict | None:
    """None when a 2xx is shaped as EnerKey's answer (JSON: "JSON format" is all the document
    says), else the verdict to act on: a web page (a captive portal, a proxy) never reached
    EnerKey, a RETRY; any other shape may be EnerKey's own, so the message may have been
    taken: a RETRY that `maybe_arrived` (an unknown outcome, gateway.uplinks.enerkey.inflight)."""
    if verdict.outcome is not Outcome.OK:
        return None
    page = is_web_page(content_type, body)
    problem = "answer is a web page, not EnerKey" if page else not_json(content_type, body)
    if problem is None:
        return None
    detail = f"HTTP {verdict.status}: {problem}"
    return Verdict(Outcome.RETRY, verdict.status, None, detail, maybe_arrived=not page)
