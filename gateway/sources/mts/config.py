"""Config of the Coherent MTS head-end source (`sources: mts:`).

MTS (Coherent Research's Meter Test System) reads modem-connected utility meters for us: we
ask for a "test" of a meter, MTS dials it (at once or overnight) and keeps the result, which we
poll. Each configured meter becomes one or two series in the store: `<id>` with the half-hourly
survey, and `registers_meter` (default `<id>-registers`) with the register snapshot read during
the test. Two series, because a snapshot stamped at the dial-in time would otherwise sit between
survey periods and make the next survey's earlier periods "older than the newest" (refused).

Survey values: the document says each reading is "the value of the register" at the start of
the half hour, and its example values rise monotonically: by default a survey value is read as
the register reading (`kind: cumulative`). A meter whose profile holds the energy OF each period
is configured `kind: interval`; its value is then turned into the average rate over the period
(kWh per half hour -> W), which needs no anchoring and is exact.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import time
from typing import Final, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from core.channels import CHANNEL_UNITS
from core.config_base import Channel, Identifier, KeyPath, ServiceBaseUrl, Strict, renamed
from core.durations import Seconds
from gateway.sources.base import SourceConfig
from gateway.sources.registry import SOURCES

MTS_URL: Final = "https://www.coherent-research.co.uk/MTS"

#: Register name (as MTS reports it; case-insensitive) -> channel, used unless overridden.
DEFAULT_REGISTERS: Final[Mapping[str, str]] = {
    "Active Energy Import": "energy_active_import",
    "Active Energy Export": "energy_active_export",
    "Reactive Energy Import": "energy_reactive_import",
    "Reactive Energy Export": "energy_reactive_export",
    "Total Active Power": "power_active",
}

#: Survey channel name -> channel (kind cumulative), used unless overridden.
DEFAULT_SURVEY: Final[Mapping[str, str]] = {
    "kWh Import": "energy_active_import",
    "kWh Export": "energy_active_export",
    "kvarh Import": "energy_reactive_import",
    "kvarh Export": "energy_reactive_export",
}

#: Canonical units of the rates an interval value may become.
RATE_UNITS: Final = frozenset({"W", "var", "VA"})

_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


class MtsChannelConfig(Strict):
    """Where one MTS register or survey channel goes."""

    channel: Channel
    #: Multiplier into the channel's canonical unit; default: from the unit MTS reports
    #: (kWh -> Wh is 1000). A value whose unit does not fit the channel is counted, not stored.
    scale: float | None = Field(default=None, gt=0)
    #: Survey only. cumulative: the reading itself; interval: the energy of the period, stored
    #: as the average rate over it (the channel must then be a power channel: W, var or VA).
    kind: Literal["cumulative", "interval"] = "cumulative"

    @model_validator(mode="after")
    def _interval_is_rate(self) -> MtsChannelConfig:
        if self.kind == "interval" and CHANNEL_UNITS[self.channel] not in RATE_UNITS:
            raise ValueError(
                "an interval value becomes an average rate: use a W, var or VA channel"
            )
        return self


def _channel_spec(value: object) -> object:
    """`name: channel` is short for `name: {channel: channel}`; null removes a default."""
    return {"channel": value} if isinstance(value, str) else value


ChannelMap = dict[str, MtsChannelConfig | None]


class MtsScheduleConfig(Strict):
    """When a meter is tested: `daily_at` site-local time (gateway.timezone), or `every`."""

    daily_at: time | None = None
    every_secs: Seconds | None = Field(
        default=None, validation_alias=renamed("every_secs", "every")
    )

    @field_validator("daily_at", mode="before")
    @classmethod
    def _hh_mm(cls, value: object) -> object:
        if isinstance(value, int):  # YAML 1.1 reads an unquoted 2:00 as 120
            raise ValueError("write the time in quotes, e.g. daily_at: '02:00'")
        if isinstance(value, str):
            match = _HHMM.match(value.strip())
            if not match:
                raise ValueError("a site-local time HH:MM, e.g. '02:00'")
            return time(int(match.group(1)), int(match.group(2)))
        return value

    @model_validator(mode="after")
    def _one_form(self) -> MtsScheduleConfig:
        if (self.daily_at is None) == (self.every_secs is None):
            raise ValueError("give exactly one of daily_at ('02:00') or every_secs (e.g. 6h)")
        return self


class MtsMeterConfig(Strict):
    """One meter MTS reads; the first group are test-request parameters, as MTS names them
    in snake case."""

    meter_type: str = Field(min_length=1)
    remote_address: str = Field(min_length=1)
    outstation_address: str | None = None
    #: Modem data bits, parity, stop bits (e.g. 7E1); normally left out.
    coms_settings: str | None = Field(default=None, pattern=r"^[5-8][NEOMS][12]$")
    #: Checked by MTS against the meter; a mismatch is reported (health and alert).
    serial_number: str | None = None
    password: SecretStr | None = None
    #: Days of half-hourly survey per test; 0: registers only.
    survey_days: int = Field(default=1, ge=0, le=366)
    #: true: MTS dials at once; false: overnight (MTS's default).
    immediate: bool = False
    schedule: MtsScheduleConfig = Field(
        default_factory=lambda: MtsScheduleConfig(daily_at=time(2, 0))
    )
    #: Register name -> channel, merged over DEFAULT_REGISTERS (null removes one).
    registers: ChannelMap = Field(default_factory=dict)
    #: Survey channel name -> channel, merged over DEFAULT_SURVEY (null removes one).
    survey: ChannelMap = Field(default_factory=dict)
    #: Meter id of the register snapshots; default `<id>-registers`. It may be the meter's own
    #: id only when survey_days is 0 (else snapshots would refuse survey periods).
    registers_meter: Identifier | None = None

    @field_validator("registers", "survey", mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        if isinstance(value, dict):
            return {key: _channel_spec(item) for key, item in value.items()}
        return value

    @field_validator("remote_address", "meter_type")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if any(c in value for c in "\r\n"):
            raise ValueError("cannot contain a line break")
        return value.strip()

    def register_map(self) -> dict[str, MtsChannelConfig]:
        """Lower-cased register name -> target, defaults merged with this meter's entries."""
        return _merged(DEFAULT_REGISTERS, self.registers)

    def survey_map(self) -> dict[str, MtsChannelConfig]:
        return _merged(DEFAULT_SURVEY, self.survey)


def _merged(defaults: Mapping[str, str], overrides: ChannelMap) -> dict[str, MtsChannelConfig]:
    merged: dict[str, MtsChannelConfig | None] = {
        name.lower(): MtsChannelConfig(channel=channel) for name, channel in defaults.items()
    }
    merged.update({name.lower(): target for name, target in overrides.items()})
    return {name: target for name, target in merged.items() if target is not None}


class MtsConfig(SourceConfig):
    base_url: ServiceBaseUrl = MTS_URL
    #: The MTS API access token (an administrator creates it in MTS: Extras - MTS API).
    token: SecretStr
    #: Gateway meter id -> the meter MTS reads.
    meters: dict[Identifier, MtsMeterConfig] = Field(min_length=1)
    timeout_secs: Seconds = 30.0
    #: A pending test is polled after this long, then at doubling intervals up to poll_max_secs.
    poll_initial_secs: Seconds = 60.0
    poll_max_secs: Seconds = 1800.0
    #: A test still PENDING after this long is cancelled and reported; the next one follows
    #: the schedule.
    pending_timeout_secs: Seconds = 172_800.0
    #: Backoff for network errors, timeouts, 5xx and unreadable answers (429: MTS's retryAfter).
    retry_initial_secs: Seconds = 5.0
    retry_max_secs: Seconds = 900.0
    #: The query parameter of test-status: the document's examples write `testid`
    #: (`test-status?testid=1234`), its parameter table `testId`.
    test_status_query_key: Literal["testid", "testId"] = "testid"
    #: The longest wait a 429's `retryAfter` (or a Retry-After) may impose; a longer one is
    #: waited this long, logged and shown (a broken or hostile server cannot stop polling).
    retry_after_max_secs: Seconds = Field(default=3600.0, gt=0)
    #: While MTS refuses the token (401/403), ask again this often.
    auth_probe_secs: Seconds = 3600.0
    #: test-search page size (`limit`) when looking for a test requested before a crash.
    #: MTS's maximum is not published: by default no limit is sent and pages are as long as
    #: the server makes them.
    search_page_size: int | None = Field(default=None, ge=1, le=1000)
    #: After an outage longer than survey_days, the next test reads back to the newest stored
    #: period, at most this many days.
    max_catchup_days: int = Field(default=31, ge=1, le=366)
    #: A catch-up reads at most this many days per test (halved while MTS refuses; the
    #: document leaves its per-test limit "to be decided"); the next chunk follows at once.
    catchup_chunk_days: int = Field(default=7, ge=1, le=366)
    #: A meter clock further off than this (MTS's meterTime offset) is alerted.
    clock_offset_alert_secs: Seconds = 60.0
    #: Length of a survey period (interval values are divided by it into a rate).
    survey_period_secs: Seconds = 1800.0
    #: HTTP requests to MTS in flight at once, across all meters.
    max_concurrency: int = Field(default=2, ge=1, le=16)
    #: A test whose meter gave another serial number than configured (or that MTS reports as
    #: a mismatch) read some other meter: skip (default) stores none of it; store keeps it.
    #: Either way it is reported (health, alert).
    on_serial_mismatch: Literal["skip", "store"] = "skip"

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret.strip() or any(c in secret for c in "\r\n "):
            raise ValueError("a token is one word without spaces or line breaks")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MtsConfig:
        if self.poll_max_secs < self.poll_initial_secs:
            raise ValueError("poll_max_secs is below poll_initial_secs")
        for meter_id, meter in self.meters.items():
            if self.registers_meter(meter_id) == meter_id and meter.survey_days > 0:
                raise ValueError(
                    f"meters.{meter_id}.registers_meter: the meter's own id only with "
                    "survey_days: 0 (snapshots would refuse survey periods)"
                )
        return self

    def registers_meter(self, meter_id: str) -> str:
        meter = self.meters[meter_id]
        return meter.registers_meter or f"{meter_id}-registers"

    def meter_ids(self) -> Iterator[tuple[KeyPath, str]]:
        for meter_id, meter in self.meters.items():
            yield ("meters", meter_id), meter_id
            registers = self.registers_meter(meter_id)
            if registers != meter_id:
                path: KeyPath = ("meters", meter_id)
                if meter.registers_meter is not None:
                    path = (*path, "registers_meter")
                yield path, registers


SOURCES.register("mts", "gateway.sources.mts.source:build_source")
