"""Config models: the one YAML file, validated strictly (a typo is an error, never ignored).

Loading, `${VAR}` substitution and file:line error reporting live in gateway.config.loader;
this module only says what a valid config is.
"""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from core.channels import PLAUSIBLE_RANGES
from core.config_base import Identifier, Strict
from core.config_errors import ConfigProblem
from core.durations import Seconds
from drivers.config import BusConfig, MeterConfig
from gateway.sources.locus.config import LocusConfig
from gateway.sources.mts.config import MtsConfig
from gateway.uplinks.enerkey.config import EnerKeyConfig
from gateway.uplinks.pts.config import PtsConfig
from gateway.uplinks.wattics.config import WatticsConfig


class GatewayConfig(Strict):
    id: Identifier
    timezone: str = "UTC"
    data_dir: Path = Path("/var/lib/meter-gateway")
    #: The store refuses new samples (loudly) beyond this size; it never deletes undelivered data.
    disk_budget_mb: float = Field(default=1024, gt=0)
    #: Delivered samples are kept this long for uplinks that look back (hourly/monthly readings).
    retention_hours: float = Field(default=48, ge=0)
    #: When the wall clock may stamp samples (gateway.clock.sync): `auto` (timesyncd's flag
    #: file or the kernel's NTP status says synchronised), `file`, `kernel` or `none` (any
    #: time after the build date). Until then readings are held (gateway.clock.hold).
    clock_check: Literal["auto", "file", "kernel", "none"] = "auto"
    #: The flag file of `file`/`auto`: systemd-timesyncd's, or one your own tool creates.
    clock_sync_file: Path = Path("/run/systemd/timesync/synchronized")
    #: Readings are held this long at most for a trusted clock, then stored flagged
    #: `clock_unsynced` (as is every reading after that until the clock is trusted).
    clock_hold_max_secs: Seconds = 900.0
    #: ... and at most this many readings (all meters together; about 2 KB each).
    clock_hold_max_samples: int = Field(default=5_000, ge=1)
    #: Channel type -> [min, max] in canonical units, over core.channels.PLAUSIBLE_RANGES: a
    #: value outside is not stored (gateway.plausibility).
    plausible_ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)

    @field_validator("plausible_ranges")
    @classmethod
    def _known_ranges(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for kind, (low, high) in value.items():
            if kind not in PLAUSIBLE_RANGES:
                known = ", ".join(sorted(PLAUSIBLE_RANGES))
                raise ValueError(f"unknown channel type {kind!r} (one of: {known})")
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"{kind}: [min, max] must be finite numbers, min below max")
        return value

    #: A read whose first request goes out later than this after its boundary is stamped with
    #: its own start time (and counted as late), not with the boundary.
    on_time_tolerance_secs: Seconds = 0.25

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from exc
        return value


class SourcesConfig(Strict):
    """Head-end systems that read meters for us; their meters are fed like polled ones."""

    mts: MtsConfig | None = None
    locus: LocusConfig | None = None


class UplinksConfig(Strict):
    wattics: WatticsConfig | None = None
    pts: PtsConfig | None = None
    enerkey: EnerKeyConfig | None = None


def _topic_prefix(value: str) -> str:
    """One or more MQTT topic levels: no wildcards, no empty level, no broker-internal `$`."""
    levels = value.split("/")
    if not value or value.startswith("$") or "" in levels or any(c in value for c in "+#\0"):
        raise ValueError("topic levels separated by '/', without '+', '#', '$' or empty levels")
    return value


#: The oldest Home Assistant release discovery payloads are made for (docs/mqtt.md): the
#: oldest our HA validation test runs (./dev.sh test-ha, tests/ha/requirements.txt).
HA_MIN_VERSION_DEFAULT: Final = "2023.8"
_HA_RELEASE = re.compile(r"^(20\d\d)\.(1[0-2]|[1-9])(?:\.\d+)?$")


def ha_release(text: str) -> tuple[int, int]:
    """A Home Assistant release "YYYY.M" (or "YYYY.M.P") as (year, month)."""
    match = _HA_RELEASE.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a Home Assistant release (YYYY.M, e.g. 2024.9)")
    return int(match.group(1)), int(match.group(2))


class MqttTlsConfig(Strict):
    """TLS to the broker. The server certificate is always verified (chain and host name)."""

    #: CA bundle that signed the broker's certificate; none: the system's trusted CAs.
    ca_file: Path | None = None
    #: Client certificate and its key, for brokers that authenticate clients by certificate.
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> MqttTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttCommandsConfig(Strict):
    """Commands the gateway accepts on `<prefix>/<id>/cmd/...`; each is off unless enabled."""

    read: bool = False
    flush: bool = False
    pts_submit: bool = False


class MqttConfig(Strict):
    host: str
    #: Default 1883, or 8883 when `tls` is set.
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls: MqttTlsConfig | None = None
    topic_prefix: str = "meter-gateway"
    client_id: str | None = None
    #: MQTT keep-alive (whole seconds are sent to the broker).
    keepalive_secs: Seconds = Field(default=60.0, ge=5)
    #: How long to wait for the broker's CONNACK, SUBACK or PUBACK before giving up the connection.
    timeout_secs: Seconds = 10.0
    #: Retained state topics are re-published this often (and on every reconnect).
    publish_interval_secs: Seconds = Field(default=10.0, ge=0.05)
    #: Reconnect backoff doubles (with jitter) up to this.
    reconnect_max_secs: Seconds = 30.0
    homeassistant_discovery: bool = False
    discovery_prefix: str = "homeassistant"
    #: The oldest Home Assistant release the discovery payloads must suit: keys newer
    #: releases added (device.model_id, 2024.9) are sent only when this allows them.
    homeassistant_min_version: str = HA_MIN_VERSION_DEFAULT
    #: Publish every stored sample on `meters/<id>/values` (not retained) for local consumers.
    publish_values: bool = False
    values_qos: Literal[0, 1] = 0
    commands: MqttCommandsConfig = Field(default_factory=MqttCommandsConfig)
    #: Telemetry waiting for the broker beyond this many messages is dropped (oldest first).
    queue_size: int = Field(default=1000, ge=10)

    @model_validator(mode="before")
    @classmethod
    def _tls_port(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("tls") is not None and "port" not in data:
            return {**data, "port": 8883}
        return data

    @field_validator("homeassistant_min_version", mode="before")
    @classmethod
    def _quoted_release(cls, value: object) -> object:
        if isinstance(value, int | float):
            raise ValueError(
                f'write the release in quotes, e.g. "2024.9" (YAML reads {value} as a number, '
                "and 2024.10 as 2024.1)"
            )
        return value

    @field_validator("homeassistant_min_version")
    @classmethod
    def _ha_release(cls, value: str) -> str:
        ha_release(value)
        return value.strip()

    @field_validator("topic_prefix", "discovery_prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        return _topic_prefix(value)


#: A secret guarding the status page and /metrics is at least this long (guessing stays hard).
MIN_HTTP_SECRET_CHARS = 12


def split_listen(value: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port` for IPv6) -> (host, port); ValueError when malformed."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError("host:port, e.g. 127.0.0.1:8480, 0.0.0.0:8480 or [::]:8480")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not 0..65535")
    return host, port


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpConfig(Strict):
    """The local status page, `/api/status` and Prometheus `/metrics` (gateway.ops.http_server).

    On by default, on loopback only. Listening on the site's network needs a `password`
    (HTTP Basic, for browsers) or a `token` (`Authorization: Bearer`, for Prometheus)."""

    enabled: bool = True
    #: `host:port`; port 0 takes a free port (the log says which).
    listen: str = "127.0.0.1:8480"
    #: HTTP Basic credentials: the user name, and the password (a secret).
    username: str = Field(default="meter-gateway", min_length=1)
    password: SecretStr | None = None
    #: A bearer token (a secret): `Authorization: Bearer <token>`.
    token: SecretStr | None = None

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @field_validator("password", "token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_HTTP_SECRET_CHARS:
            raise ValueError(f"use at least {MIN_HTTP_SECRET_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _lan_needs_a_secret(self) -> HttpConfig:
        host, _ = self.host_port
        if self.enabled and not is_loopback_host(host) and not self.secured:
            raise ValueError(
                f"listen {self.listen} is reachable from the network: set a password or a "
                "token (a secret, e.g. ${STATUS_PAGE_TOKEN}), or listen on 127.0.0.1"
            )
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        return split_listen(self.listen)

    @property
    def secured(self) -> bool:
        return self.password is not None or self.token is not None


class Config(Strict):
    gateway: GatewayConfig
    buses: dict[Identifier, BusConfig] = Field(default_factory=dict)
    meters: list[MeterConfig] = Field(default_factory=list)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    uplinks: UplinksConfig = Field(default_factory=UplinksConfig)
    mqtt: MqttConfig | None = None
    http: HttpConfig = Field(default_factory=HttpConfig)
    #: What the loader found worth saying but not refusing (old key names), for check-config.
    _warnings: list[ConfigProblem] = PrivateAttr(default_factory=list)
    #: Secrets that could not be found but this command does not need (gateway.config.loader).
    _unset_secrets: list[ConfigProblem] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[ConfigProblem]:
        return self._warnings

    @property
    def unset_secrets(self) -> list[ConfigProblem]:
        return self._unset_secrets

    def meter(self, meter_id: str) -> MeterConfig:
        for meter in self.meters:
            if meter.id == meter_id:
                return meter
        raise KeyError(meter_id)
