"""Config of the Wattics uplink (`uplinks: wattics:`): credentials, datapoints, delivery policy.

A Wattics *datapoint* (stream id) receives either electricity packets (the 21 named
parameters, filled from a meter's canonical channels) or single-value packets
(`{"id","tsISO8601","value"}`, one channel of one meter). `meters:` is the short form for
one electricity datapoint per meter; `datapoints:` lists any mix, so one meter can feed an
electricity datapoint and separate value datapoints (e.g. export energy, gas volume).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from core.config_base import Channel, KeyPath, ServiceUrl, Strict, renamed
from core.durations import Seconds, SecondsOrZero
from gateway.uplinks.base import StreamUplinkConfig
from gateway.uplinks.registry import UPLINKS

WATTICS_PRODUCTION_URL = "https://web-collector.wattics.com/measurements/v2/unifiedjson/"
#: The route on which Wattics converts UTC timestamps to the site's local time (NOTES.md).
UTC_ROUTE_SEGMENT = "unifiedjson_utc/"
LOCAL_ROUTE_SEGMENT = "unifiedjson/"
#: The push routes by `timestamps` setting; the last path segment of `url` names one of them.
ROUTE_SEGMENTS = {"local": LOCAL_ROUTE_SEGMENT, "utc": UTC_ROUTE_SEGMENT}


class _Cadence(Strict):
    #: The transmission interval the datapoint is registered with at Wattics (e.g. 5m, 15m).
    #: None: every stored sample is sent with its own timestamp. With an interval, one packet
    #: per boundary of that interval in site-local time (see gateway.uplinks.wattics.interval).
    interval_secs: Seconds | None = Field(
        default=None, validation_alias=renamed("interval_secs", "interval")
    )
    #: With an interval: a boundary without a sample exactly on it takes the newest sample at
    #: most this much before it (stamped at the boundary); none that close leaves a hole.
    tolerance_secs: Seconds | None = Field(
        default=None, validation_alias=renamed("tolerance_secs", "tolerance")
    )

    @field_validator("interval_secs")
    @classmethod
    def _whole_seconds_dividing_a_day(cls, value: float | None) -> float | None:
        if value is not None and (value < 1 or value != int(value) or 86400 % int(value)):
            raise ValueError("must be whole seconds that divide a day (e.g. 60s, 5m, 15m, 1h)")
        return value


class WatticsMeterConfig(_Cadence):
    """Short form: this meter's electricity packets go to datapoint `id`."""

    #: The Wattics data stream id the platform assigned to this meter.
    id: str = Field(min_length=1)


class WatticsDatapointConfig(_Cadence):
    """One Wattics datapoint fed by one meter."""

    id: str = Field(min_length=1)
    meter: str = Field(min_length=1)
    #: A canonical channel (core.channels) for a single-value packet; none: an
    #: electricity packet built from every electricity channel the meter has.
    channel: Channel | None = None
    #: Multiplies the value before sending (e.g. 0.001 when the datapoint is registered in
    #: kWh and the channel is in Wh). Value packets only.
    scale: float = 1.0

    @model_validator(mode="after")
    def _scale_only_for_values(self) -> WatticsDatapointConfig:
        if self.channel is None and self.scale != 1.0:
            raise ValueError("scale applies to value datapoints (with a channel) only")
        return self


class WatticsConfig(StreamUplinkConfig):
    url: ServiceUrl = WATTICS_PRODUCTION_URL
    #: `local`: site-local timestamps with offset on the documented route. `utc`: UTC
    #: timestamps on the `unifiedjson_utc/` route, where Wattics converts them itself.
    timestamps: Literal["local", "utc"] = "local"
    username: SecretStr
    password: SecretStr
    meters: dict[str, WatticsMeterConfig] = Field(default_factory=dict)
    datapoints: list[WatticsDatapointConfig] = Field(default_factory=list)
    #: Default tolerance of datapoints with an interval that do not set their own.
    tolerance_secs: Seconds = Field(
        default=60.0, validation_alias=renamed("tolerance_secs", "tolerance")
    )
    #: A sample at most `tolerance` before a boundary is sent once no better one can come:
    #: when a later sample is stored, or this long after the boundary.
    boundary_wait_secs: SecondsOrZero = 30.0
    #: Send per-phase energy (pC_1..3 <- energy_active_import_l1..l3) instead of the total in
    #: pC_1 (the API's rule for "one total value").
    energy_per_phase: bool = False
    #: Acknowledged packets are committed to the cursors in groups, every stream in one
    #: transaction: after a stream acknowledged this many packets, or this many seconds after
    #: the last group, and when stopping. After a crash at most that much is sent again (and
    #: resync_on_start usually skips even that). Fewer commits spare the SD card.
    commit_every_packets: int = Field(default=100, ge=1)
    commit_every_secs: Seconds = 30.0
    #: On start, ask Wattics for each stream's last processed packet (GET ?stream=) and skip
    #: what it already has: Wattics would discard those packets as out of order anyway.
    resync_on_start: bool = True
    #: Keep lifetime counters (pC_n, value datapoints of energy/gas/water/heat registers)
    #: continuous across meter swaps and resets flagged by the poller, so Wattics never sees
    #: negative or absurd consumption (gateway.uplinks.wattics.continuity). false: forward raw.
    counter_continuity: bool = True

    @field_validator("username")
    @classmethod
    def _basic_auth_username(cls, value: SecretStr) -> SecretStr:
        if ":" in value.get_secret_value():
            raise ValueError("a basic-auth username cannot contain ':'")
        return value

    @model_validator(mode="after")
    def _datapoints_are_distinct(self) -> WatticsConfig:
        if not self.meters and not self.datapoints:
            raise ValueError("name at least one datapoint, under `meters` or `datapoints`")
        seen: dict[str, str] = {}
        for datapoint in self.all_datapoints():
            if datapoint.id in seen:
                raise ValueError(
                    f"Wattics datapoint {datapoint.id!r} is configured twice "
                    f"({seen[datapoint.id]!r} and {datapoint.meter!r})"
                )
            seen[datapoint.id] = datapoint.meter
        return self

    @model_validator(mode="after")
    def _route_known_for_utc(self) -> WatticsConfig:
        if self.timestamps == "utc" and _route_base(self.url) is None:
            raise ValueError(
                "timestamps: utc needs a url whose path ends in /unifiedjson/ or "
                "/unifiedjson_utc/ (the gateway chooses the UTC route from the setting; "
                "UTC timestamps must never reach the local-time route)"
            )
        return self

    def post_url(self) -> str:
        """The push route chosen from `timestamps`, not from the URL's spelling: a URL
        naming either route (with or without its trailing slash) gets the route of the
        setting, with the trailing slash Wattics needs. Another path (a proxy) is used as
        given for local timestamps (config refuses it for UTC ones)."""
        base = _route_base(self.url)
        if base is None:
            return self.url
        return base + ROUTE_SEGMENTS[self.timestamps]

    def all_datapoints(self) -> list[WatticsDatapointConfig]:
        """The `meters:` short form and `datapoints:` as one list, each with its tolerance."""
        points = [
            WatticsDatapointConfig(
                id=m.id, meter=meter, interval_secs=m.interval_secs, tolerance_secs=m.tolerance_secs
            )
            for meter, m in self.meters.items()
        ]
        points.extend(self.datapoints)
        return [
            p.model_copy(update={"tolerance_secs": self.tolerance_secs})
            if p.tolerance_secs is None
            else p
            for p in points
        ]

    def meter_references(self) -> Iterator[tuple[KeyPath, str]]:
        for meter_id in self.meters:
            yield ("meters", meter_id), meter_id
        for index, datapoint in enumerate(self.datapoints):
            yield ("datapoints", index, "meter"), datapoint.meter


def _route_base(url: str) -> str | None:
    """The URL up to its route segment (`.../v2/`), or None when it names no Wattics route."""
    head, _, query = url.partition("?")
    if query:
        return None
    stripped = head.rstrip("/")
    for segment in ROUTE_SEGMENTS.values():
        name = segment.rstrip("/")
        if stripped.endswith("/" + name):
            return stripped[: -len(name)]
    return None


UPLINKS.register("wattics", "gateway.uplinks.wattics.uplink:build_uplink")
