"""Config of the Locus Energy source (`sources: locus:`), see gateway.sources.locus.source.

Vendor knowledge is data here: which Locus field (a dataavailable `shortName` such as `W_avg`
or `Wh_sum`) feeds which canonical channel, and how its values are to be read:

- `value`: taken as it is (power, voltage, ... averaged over the interval).
- `interval`: energy measured during the interval (Locus data calls return interval values,
  never accumulated ones); the source adds them up into a lifetime counter, because every
  energy channel in the store is a counter that never decreases.
- `counter`: a field that already is a lifetime register; taken as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Final, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from core.channels import COUNTER_CHANNELS
from core.config_base import Channel, Identifier, KeyPath, ServiceBaseUrl, Strict, renamed
from core.durations import Seconds, SecondsOrZero
from gateway.sources.base import SourceConfig
from gateway.sources.registry import SOURCES

LOCUS_URL: Final = "https://api.locusenergy.com"

Granularity = Literal["1min", "5min", "15min", "hourly", "daily"]

#: Length of one interval of each granularity the source may poll or backfill with.
GRANULARITY_SECS: Final[dict[str, int]] = {
    "1min": 60,
    "5min": 300,
    "15min": 900,
    "hourly": 3600,
    "daily": 86_400,
}

#: The longest data-call window Locus allows per granularity (NOTES.md: 1min < 5 days;
#: 5min/15min/hourly < 31 days; daily < 1 year). A window must stay strictly below it.
SPAN_LIMIT_SECS: Final[dict[str, int]] = {
    "1min": 5 * 86_400,
    "5min": 31 * 86_400,
    "15min": 31 * 86_400,
    "hourly": 31 * 86_400,
    "daily": 365 * 86_400,
}

FieldKind = Literal["value", "interval", "counter"]


class LocusFieldConfig(Strict):
    """How one Locus field becomes one channel."""

    channel: Channel
    #: Default: `interval` for a `_sum` field on a counter channel, `counter` for any other
    #: field on a counter channel, `value` otherwise.
    kind: FieldKind | None = None
    #: Multiply Locus' values by this. Default: taken from the unit dataavailable reports
    #: (kWh -> Wh is 1000); required when that unit cannot be converted to the channel's.
    scale: float | None = Field(default=None, gt=0)


def _field(item: object) -> object:
    """`W_avg: power_active` is short for `W_avg: {channel: power_active}`."""
    return {"channel": item} if isinstance(item, str) else item


def default_fields() -> dict[str, LocusFieldConfig]:
    return {
        "W_avg": LocusFieldConfig(channel="power_active", kind="value"),
        "Wh_sum": LocusFieldConfig(channel="energy_active_import", kind="interval"),
    }


def resolved_kind(short_name: str, spec: LocusFieldConfig) -> FieldKind:
    if spec.kind is not None:
        return spec.kind
    if spec.channel in COUNTER_CHANNELS:
        return "interval" if short_name.endswith("_sum") else "counter"
    return "value"


class LocusMeterConfig(Strict):
    """One Locus component, known by its component id or found by its node id."""

    component_id: int | None = Field(default=None, ge=0)
    #: The node (MAC) id; looked up at start with /v3/partners/{partner_id}/components.
    node_id: str | None = Field(default=None, min_length=1)
    #: How often `gran=latest` is asked.
    interval_secs: Seconds = Field(
        default=300.0, validation_alias=renamed("interval_secs", "interval")
    )
    #: The meter's interval length: the latest point and backfill windows are read as
    #: intervals of this granularity.
    granularity: Granularity = "5min"
    #: Locus field -> channel (a channel name or {channel, kind, scale}).
    fields: dict[str, LocusFieldConfig] = Field(default_factory=default_fields, min_length=1)

    @field_validator("fields", mode="before")
    @classmethod
    def _short_forms(cls, value: object) -> object:
        if isinstance(value, dict):
            return {key: _field(item) for key, item in value.items()}
        return value

    @model_validator(mode="after")
    def _one_identity(self) -> LocusMeterConfig:
        if (self.component_id is None) == (self.node_id is None):
            raise ValueError("give exactly one of component_id and node_id")
        channels: set[str] = set()
        for short_name, spec in self.fields.items():
            kind = resolved_kind(short_name, spec)
            if kind != "value" and spec.channel not in COUNTER_CHANNELS:
                raise ValueError(f"fields.{short_name}: kind {kind} needs a counter channel")
            if kind == "value" and spec.channel in COUNTER_CHANNELS:
                raise ValueError(
                    f"fields.{short_name}: {spec.channel} is a counter: kind interval or counter"
                )
            if spec.channel in channels:
                raise ValueError(f"fields.{short_name}: channel {spec.channel} is fed twice")
            channels.add(spec.channel)
        return self

    @property
    def granularity_secs(self) -> int:
        return GRANULARITY_SECS[self.granularity]


class LocusConfig(SourceConfig):
    base_url: ServiceBaseUrl = LOCUS_URL
    #: API credentials from the Locus account manager.
    client_id: SecretStr
    client_secret: SecretStr
    #: Password grant (with refresh token) when set; else the client-credentials grant.
    username: SecretStr | None = None
    password: SecretStr | None = None
    #: Needed to find components by node id.
    partner_id: int | None = Field(default=None, ge=0)
    meters: dict[Identifier, LocusMeterConfig] = Field(min_length=1)
    #: Refresh the access token this long before `expires_in` runs out (at most half of it).
    token_refresh_margin_secs: SecondsOrZero = 120.0
    timeout_secs: Seconds = 60.0
    #: After an outage, backfill at most this far back from now.
    backfill_max_days: float = Field(default=90.0, gt=0)
    #: Backfill window length; default: the longest the granularity allows, less one interval.
    backfill_window_secs: Seconds | None = Field(
        default=None, validation_alias=renamed("backfill_window_secs", "backfill_window")
    )
    #: An interval without data this recent may still be uploaded (a logger that is late):
    #: reading holds there and asks again; an older one is passed, counted and alerted (0: none).
    settle_secs: SecondsOrZero = 86_400.0
    #: At first start (nothing stored for the meter), `interval` counters start from the
    #: component's lifetime energy (yearly, monthly, daily and interval sums since
    #: `lifetime_since`), or from zero.
    counter_baseline: Literal["lifetime", "zero"] = "lifetime"
    lifetime_since: date = date(2000, 1, 1)
    retry_initial_secs: Seconds = 5.0
    retry_max_secs: Seconds = 600.0
    #: While credentials are refused (401/403 on /oauth/token), try again this often.
    auth_probe_secs: Seconds = 900.0
    #: A meter whose configured field or component does not exist is checked again this often.
    config_recheck_secs: Seconds = 3600.0

    @model_validator(mode="after")
    def _consistent(self) -> LocusConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together (password grant)")
        if self.partner_id is None and any(m.node_id for m in self.meters.values()):
            raise ValueError("partner_id is required to find components by node_id")
        if self.backfill_window_secs is not None:
            for meter_id, meter in self.meters.items():
                limit = SPAN_LIMIT_SECS[meter.granularity]
                if not meter.granularity_secs <= self.backfill_window_secs < limit:
                    raise ValueError(
                        f"backfill_window_secs must be below {limit // 86_400} days for "
                        f"{meter.granularity} (meter {meter_id}) and at least one interval"
                    )
        return self

    @property
    def grant(self) -> Literal["password", "client_credentials"]:
        return "password" if self.username is not None else "client_credentials"

    def window_secs(self, meter: LocusMeterConfig) -> int:
        """Backfill window for `meter`: whole intervals, strictly inside the span limit."""
        step = meter.granularity_secs
        limit = SPAN_LIMIT_SECS[meter.granularity]
        wanted = int(self.backfill_window_secs) if self.backfill_window_secs else limit - step
        return max(step, min(wanted, limit - step) // step * step)

    def meter_ids(self) -> Iterator[tuple[KeyPath, str]]:
        for meter_id in self.meters:
            yield ("meters", meter_id), meter_id


SOURCES.register("locus", "gateway.sources.locus.source:build_source")
