"""The `uplinks: enerkey:` config section (see gateway.uplinks.enerkey.uplink for what is sent).

EnerKey does not publish the paths, verb or body of its push operations (NOTES.md): the
defaults below are documented guesses, and every path and body field name can be overridden.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Final, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from core.channels import ENERGY_CHANNELS, unit_of
from core.config_base import GatewayFacts, KeyPath, ServiceBaseUrl, Strict, renamed
from core.durations import Seconds
from gateway.timefmt import zone
from gateway.uplinks.base import StreamUplinkConfig
from gateway.uplinks.registry import UPLINKS

ENERKEY_URL: Final = "https://api.enerkey.com"
#: Defaults follow the one path EnerKey documents (`/api/v2/Provisioning/ProvisioningStatus`):
#: `/api/v2/<section>/<operation>`, the section being "Values". UNKNOWN: check with EnerKey.
CUMULATIVE_PATH: Final = "/api/v2/Values/PushCumulativeReadingsForMeter"
CONSUMPTION_PATH: Final = "/api/v2/Values/PushConsumptionsForMeter"

#: Output unit -> divisor of the stored base unit (Wh or varh).
UNIT_DIVISORS: Final = {
    "Wh": 1.0,
    "kWh": 1e3,
    "MWh": 1e6,
    "varh": 1.0,
    "kvarh": 1e3,
    "Mvarh": 1e6,
}

MeterId = Annotated[int, Field(ge=0)] | Annotated[str, Field(min_length=1, max_length=100)]


class EnerKeyApiKeyConfig(Strict):
    """One of the profile's two API keys; the dates (UTC days, inclusive) are optional hints."""

    key: SecretStr
    valid_from: date | None = None
    valid_until: date | None = None

    @field_validator("key")
    @classmethod
    def _not_blank(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret.strip():
            raise ValueError("an API key cannot be empty")
        if any(c in secret for c in "\r\n"):
            raise ValueError("an API key cannot contain a line break")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> EnerKeyApiKeyConfig:
        if self.valid_from and self.valid_until and self.valid_until < self.valid_from:
            raise ValueError("valid_until is before valid_from")
        return self


class EnerKeyMeterConfig(Strict):
    #: The meter's id in EnerKey (a number there; text is sent as a JSON string).
    meter_id: MeterId
    #: cumulative: the counter reading at each hour (idempotent, the default);
    #: consumption: the energy of each hour (EnerKey SUMS values of one hour, see
    #: docs/uplinks/enerkey.md).
    mode: Literal["cumulative", "consumption"] = "cumulative"
    #: The stored energy channel (a counter in Wh or varh, core.channels).
    channel: str = "energy_active_import"
    #: The unit of the meter in EnerKey ("Unit of data is meter default in EnerKey"); values
    #: are divided from Wh (or varh) into it. Required: a guess is a silent x1000 error.
    unit: Literal["Wh", "kWh", "MWh", "varh", "kvarh", "Mvarh"]
    #: Values are rounded to this many decimals (in `unit`); consumption is the difference
    #: of the rounded readings, so the hours add up exactly to the readings.
    decimals: int = Field(default=6, ge=0, le=9)

    @model_validator(mode="before")
    @classmethod
    def _unit_stated(cls, data: object) -> object:
        if isinstance(data, dict) and "unit" not in data:
            raise ValueError(
                "unit is required: the meter's unit in EnerKey (Wh, kWh, MWh, varh, kvarh or "
                "Mvarh; EnerKey takes values in the meter's default unit, see its meter "
                "settings), so a wrong guess is not a silent x1000 error"
            )
        return data

    @field_validator("channel")
    @classmethod
    def _energy_channel(cls, value: str) -> str:
        if value not in ENERGY_CHANNELS:
            known = ", ".join(sorted(ENERGY_CHANNELS))
            raise ValueError(f"not an energy counter channel (one of {known})")
        return value

    @model_validator(mode="after")
    def _unit_matches(self) -> EnerKeyMeterConfig:
        base = unit_of(self.channel)
        if self.unit not in (base, f"k{base}", f"M{base}"):
            raise ValueError(f"unit {self.unit} does not fit channel {self.channel} ({base})")
        return self

    @property
    def divisor(self) -> float:
        return UNIT_DIVISORS[self.unit]


class EnerKeyFieldsConfig(Strict):
    """JSON names in the push body: `{meter_id: .., values: [{timestamp: .., value: ..}]}`."""

    meter_id: str = Field(default="meterId", min_length=1)
    values: str = Field(default="values", min_length=1)
    timestamp: str = Field(default="timestamp", min_length=1)
    value: str = Field(default="value", min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> EnerKeyFieldsConfig:
        if self.meter_id == self.values or self.timestamp == self.value:
            raise ValueError("field names on the same level must differ")
        return self


def _api_key(item: object) -> object:
    """A plain string is a key without validity dates."""
    return {"key": item} if isinstance(item, str | SecretStr) else item


class EnerKeyConfig(StreamUplinkConfig):
    base_url: ServiceBaseUrl = ENERKEY_URL
    #: One or two keys (A, B); a plain string or {key, valid_from, valid_until}.
    api_keys: list[EnerKeyApiKeyConfig] = Field(min_length=1, max_length=2)
    #: gateway meter id -> its EnerKey meter.
    meters: dict[str, EnerKeyMeterConfig] = Field(min_length=1)
    #: The reading at an hour is interpolated between samples at most this far apart.
    max_interpolation_gap_secs: Seconds = Field(
        default=900.0,
        le=86_400.0,
        validation_alias=renamed("max_interpolation_gap_secs", "max_interpolation_gap"),
    )
    #: Paths under base_url; `{meter_id}` is replaced by the URL-encoded EnerKey meter id.
    cumulative_path: str = CUMULATIVE_PATH
    consumption_path: str = CONSUMPTION_PATH
    fields: EnerKeyFieldsConfig = Field(default_factory=EnerKeyFieldsConfig)
    #: utc: `2024-03-31T01:00:00Z`; offset: site-local with its offset `...T04:00:00+03:00`.
    timestamp_format: Literal["utc", "offset"] = "utc"
    #: Which end of the hour stamps an hour's consumption.
    consumption_timestamp: Literal["hour_start", "hour_end"] = "hour_start"
    #: Put before the key in the Authorization header (e.g. "Bearer "); EnerKey: the bare key.
    authorization_prefix: str = ""
    #: EnerKey's limit per key and 24 h; calls are spread so that no 24 h window exceeds it.
    rate_limit_per_day: int = Field(default=40_000, ge=10)
    #: Calls that may go at once (after a start or a quiet spell) before spreading applies.
    rate_limit_burst: int = Field(default=100, ge=1)
    #: A backlog is sent in messages spanning at most this many days (EnerKey: 365).
    max_days_per_message: int = Field(default=365, ge=1, le=365)
    #: Meters sent at the same time (one message per meter and request).
    max_concurrency: int = Field(default=2, ge=1, le=16)
    #: What was pushed per meter and hour is kept this long (the duplicate guard, for audits).
    keep_delivered_days: int = Field(default=400, ge=1)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _plain_keys(cls, value: object) -> object:
        return [_api_key(item) for item in value] if isinstance(value, list) else value

    @field_validator("cumulative_path", "consumption_path")
    @classmethod
    def _path_template(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("a path starts with '/'")
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"bad placeholder: {exc}") from exc
        if names - {"meter_id"}:
            raise ValueError("the only placeholder is {meter_id}")
        return value

    @field_validator("authorization_prefix")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if any(c in value for c in "\r\n"):
            raise ValueError("cannot contain a line break")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EnerKeyConfig:
        if self.rate_limit_burst >= self.rate_limit_per_day:
            raise ValueError("rate_limit_burst must be below rate_limit_per_day")
        if len(self.api_keys) == 2 and (
            self.api_keys[0].key.get_secret_value() == self.api_keys[1].key.get_secret_value()
        ):
            raise ValueError("api_keys: the two keys are the same")
        owners: dict[str, str] = {}
        for meter, target in self.meters.items():
            stream = str(target.meter_id)
            if stream in owners:
                raise ValueError(
                    f"EnerKey meter {stream} is configured for two meters "
                    f"({owners[stream]!r} and {meter!r})"
                )
            owners[stream] = meter
        return self

    def meter_references(self) -> Iterator[tuple[KeyPath, str]]:
        for meter_id in self.meters:
            yield ("meters", meter_id), meter_id

    def site_problems(self, gateway: GatewayFacts) -> Iterator[tuple[KeyPath, str]]:
        """`offset` stamps need a zone whose offsets are whole hours: elsewhere a UTC hour is
        hh:30 or hh:45 local, not on the hour as written (EnerKey's resolution is hourly)."""
        if self.timestamp_format == "offset":
            odd = odd_offsets(gateway.timezone)
            if odd:
                yield (
                    ("timestamp_format",),
                    f"offset: the site's time zone {gateway.timezone} has offsets that are not "
                    f"whole hours ({', '.join(odd)}), where an hour boundary is not on the hour "
                    "in local time; use timestamp_format: utc",
                )


@functools.cache
def odd_offsets(name: str) -> tuple[str, ...]:
    """UTC offsets (+hh:mm) of zone `name`, 2000..2040, that are not whole hours (sampled
    daily: no zone changes its offset for less than a day)."""
    tz = zone(name)
    start = datetime(2000, 1, 1, tzinfo=UTC)
    found: set[timedelta] = set()
    for day in range(0, 41 * 366):
        offset = (start + timedelta(days=day)).astimezone(tz).utcoffset()
        if offset is not None and offset % timedelta(hours=1):
            found.add(offset)
    return tuple(_hhmm(offset) for offset in sorted(found))


def _hhmm(offset: timedelta) -> str:
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


UPLINKS.register("enerkey", "gateway.uplinks.enerkey.uplink:build_uplink")
