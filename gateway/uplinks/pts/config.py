"""Config of the MassCEC PTS uplink (`uplinks.pts`): which meter reports for which system.

The staging host and prefix are known (NOTES.md); the production prefix is not published, so
`environment: production` refuses to start until `base_url` and `path_prefix` are set from
what the MassCEC help desk gives with production access.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from core.channels import CHANNEL_UNITS
from core.config_base import KeyPath, ServiceBaseUrl, Strict, UplinkConfig
from core.durations import Seconds
from gateway.uplinks.registry import UPLINKS

PTS_STAGING_BASE_URL = "https://automatedreporting.masscec-pts.com"
PTS_STAGING_PATH_PREFIX = "/ptsstaging"


class PtsSystemConfig(Strict):
    """One PTS system, fed by the meter whose id is the key in `systems`."""

    #: The PTS key of the system (the API's `fk_system`).
    fk_system: int = Field(gt=0)
    #: The lifetime (cumulative) production register: Wh in the store, submitted in kWh.
    channel: str = "energy_active_import"
    #: Expected capacity for the plausibility check; default: the capacity GetSystems reports.
    capacity_kw: float | None = Field(default=None, gt=0)
    #: Sent as the reading's `Notes`.
    notes: str | None = Field(default=None, max_length=500)

    @field_validator("channel")
    @classmethod
    def _energy_in_wh(cls, value: str) -> str:
        if CHANNEL_UNITS.get(value) != "Wh" or not value.startswith("energy_"):
            raise ValueError("must be a cumulative energy channel in Wh, e.g. energy_active_import")
        return value


class PtsConfig(UplinkConfig):
    subscription_key: SecretStr
    #: `staging` needs nothing else; `production` needs base_url AND path_prefix (UNKNOWN
    #: until MassCEC grants production access: they are not published).
    environment: Literal["staging", "production"] = "staging"
    base_url: ServiceBaseUrl | None = None
    path_prefix: str | None = None
    #: meter id -> the PTS system its lifetime energy register reports for.
    systems: dict[str, PtsSystemConfig] = Field(min_length=1)
    #: Batch-level `Notes` of each submission.
    notes: str | None = Field(default=None, max_length=500)
    #: The window, in Eastern time, runs from local midnight `window_days_before` days before
    #: the first of the next month to local midnight `window_days_after` days after it
    #: (5/5: January 27 00:00 to February 6 00:00, i.e. "January 27th – February 5th").
    window_days_before: int = Field(default=5, ge=0, le=20)
    window_days_after: int = Field(default=5, ge=1, le=20)
    #: The automatic submission is made this long after the month end (not on the last day).
    submit_after_days: float = Field(default=1.0, ge=0)
    #: Energy since the last accepted reading may not exceed capacity × hours × this factor.
    plausibility_factor: float = Field(default=1.0, gt=0)
    #: Run the reading through ARPostTest (validation, nothing saved) before spending quota.
    test_before_submit: bool = True
    #: ARPostTest "will be run through Validation" and PTS limits "3 failed validation
    #: submissions per system": a failed test, or one whose answer says nothing of the
    #: system, counts against the failed quota (the conservative reading), and no test is
    #: run when that quota is used up.
    count_failed_tests: bool = True
    #: MeterValue is sent in kWh rounded DOWN to this many decimals (every example in the
    #: document has one); PTS's echo is the same reading within one step of it.
    meter_value_decimals: int = Field(default=1, ge=0, le=3)
    #: Submissions per system and window; raise only when the help desk has raised them
    #: (`meter-gateway pts quota` records a raise for one system and window).
    quota_valid: int = Field(default=2, ge=1)
    quota_failed: int = Field(default=3, ge=1)
    #: Retry a Failed submission automatically when the failure names something the gateway
    #: can fix, and only while a failed submission stays in reserve for a human.
    auto_retry: bool = True
    #: Alert this long before the window closes while a system has no Passed reading.
    missed_window_alert_hours: float = Field(default=48.0, ge=0)
    #: GetSubmissionStatus is polled this long after a submission, then at doubling
    #: intervals up to status_poll_max_secs while it is pending ("API Key may be invalidated
    #: for abuse"); one call asks for every pending system (batching).
    status_poll_secs: Seconds = 300.0
    status_poll_max_secs: Seconds = 3600.0
    #: A submission whose ARPost got no answer (timeout, 5xx, lost connection) counts as not
    #: received only when GetSubmissionStatus has not shown it for this long AND in this many
    #: polls: PTS first writes it to an "interim table". Until then it counts on both quotas.
    unseen_after_secs: Seconds = 21_600.0
    unseen_polls: int = Field(default=4, ge=1)
    #: GetSystems confirms the configured systems at start and this often (daily).
    systems_check_secs: Seconds = 86_400.0
    #: The uplink re-evaluates its systems at least this often.
    check_every_secs: Seconds = 300.0
    #: GetSystems / GetLastReading: `GET ?fk_system=1,2` or `POST {"systems": [...]}`.
    query_method: Literal["GET", "POST"] = "GET"
    timeout_secs: Seconds = 30.0
    retry_initial_secs: Seconds = 5.0
    retry_max_secs: Seconds = 900.0
    #: While the key is refused (400 "Bad API Key", 401, 403), probe this often.
    auth_probe_secs: Seconds = 3600.0

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("must start with '/' (e.g. /ptsstaging), or be empty")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PtsConfig:
        if self.environment == "production" and (self.base_url is None or self.path_prefix is None):
            raise ValueError(
                "environment production needs base_url and path_prefix (the production "
                "address is not published: use the one MassCEC gave with production access)"
            )
        if self.status_poll_max_secs < self.status_poll_secs:
            raise ValueError("status_poll_max_secs must not be less than status_poll_secs")
        if self.submit_after_days >= self.window_days_after:
            raise ValueError("submit_after_days must be less than window_days_after")
        seen: dict[int, str] = {}
        for meter, system in self.systems.items():
            if system.fk_system in seen:
                raise ValueError(
                    f"fk_system {system.fk_system} is configured for two meters "
                    f"({seen[system.fk_system]!r} and {meter!r})"
                )
            seen[system.fk_system] = meter
        return self

    @property
    def api_root(self) -> str:
        """`base_url + path_prefix`: operations are `<api_root>/GetSystems` and so on."""
        base = self.base_url or PTS_STAGING_BASE_URL
        prefix = PTS_STAGING_PATH_PREFIX if self.path_prefix is None else self.path_prefix
        return base + prefix

    def meter_references(self) -> Iterator[tuple[KeyPath, str]]:
        for meter_id in self.systems:
            yield ("systems", meter_id), meter_id


UPLINKS.register("pts", "gateway.uplinks.pts.uplink:build_uplink")
