"""Config models: the one YAML file, validated strictly (a typo is an error, never ignored).

Loading, `${VAR}` substitution and file:line error reporting live in gateway.config_loader;
this module only says what a valid config is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from gateway.durations import Seconds

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ID = re.compile(ID_PATTERN)

Identifier = Annotated[str, Field(pattern=ID_PATTERN)]

WATTICS_PRODUCTION_URL = "https://web-collector.wattics.com/measurements/v2/unifiedjson/"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(Strict):
    id: Identifier
    timezone: str = "UTC"
    data_dir: Path = Path("/var/lib/meter-gateway")
    #: The store refuses new samples (loudly) beyond this size; it never deletes undelivered data.
    disk_budget_mb: float = Field(default=1024, gt=0)
    #: Delivered samples are kept this long for uplinks that look back (hourly/monthly readings).
    retention_hours: float = Field(default=48, ge=0)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from exc
        return value


class ModbusTcpBus(Strict):
    type: Literal["modbus-tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    timeout_secs: float = Field(default=3.0, gt=0)
    reconnect_max_secs: float = Field(default=60.0, gt=0)


class ModbusRtuBus(Strict):
    type: Literal["modbus-rtu"]
    port: str
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_secs: float = Field(default=1.0, gt=0)
    reconnect_max_secs: float = Field(default=60.0, gt=0)


Bus = Annotated[ModbusTcpBus | ModbusRtuBus, Field(discriminator="type")]


class Meter(Strict):
    id: Identifier
    bus: str
    unit: int = Field(default=1, ge=0, le=247)
    model: str
    interval: Seconds = 60.0
    #: Per-read timeout; defaults to the bus timeout.
    timeout_secs: float | None = Field(default=None, gt=0)


class WatticsMeter(Strict):
    #: The Wattics data stream id the platform assigned to this meter.
    id: str = Field(min_length=1)


class WatticsUplink(Strict):
    url: str = WATTICS_PRODUCTION_URL
    username: SecretStr
    password: SecretStr
    meters: dict[str, WatticsMeter] = Field(min_length=1)
    timeout_secs: float = Field(default=30.0, gt=0)
    #: How many Wattics streams are sent concurrently (each stream stays in order).
    max_concurrency: int = Field(default=4, ge=1, le=64)
    #: A packet answered 400/404/422 this many times is parked in the dead-letter table.
    max_attempts_rejected: int = Field(default=3, ge=1)
    retry_initial_secs: float = Field(default=1.0, gt=0)
    retry_max_secs: float = Field(default=300.0, gt=0)
    #: While credentials are refused (401/403), probe again this often.
    auth_probe_secs: float = Field(default=300.0, gt=0)
    #: Send per-phase energy (pC_1..3 <- energy_active_import_l1..l3) instead of the total in
    #: pC_1 (the API's rule for "one total value").
    energy_per_phase: bool = False
    #: Acknowledged packets are committed to the cursor in groups: after this many packets or
    #: this many seconds, and at once when a stream is caught up, waits, or stops. After a crash
    #: at most one group is sent again (and resync_on_start usually skips even that).
    commit_every_packets: int = Field(default=100, ge=1)
    commit_every_secs: float = Field(default=5.0, gt=0)
    #: On start, ask Wattics for each stream's last processed packet (GET ?stream=) and skip
    #: what it already has: Wattics would discard those packets as out of order anyway.
    resync_on_start: bool = True
    #: At shutdown, a request in flight may finish for this long (then it is abandoned and
    #: sent again next start).
    shutdown_grace_secs: float = Field(default=2.0, ge=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("username")
    @classmethod
    def _basic_auth_username(cls, value: SecretStr) -> SecretStr:
        if ":" in value.get_secret_value():
            raise ValueError("a basic-auth username cannot contain ':'")
        return value


class Uplinks(Strict):
    wattics: WatticsUplink | None = None


class MqttSection(Strict):
    host: str
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    topic_prefix: str = "meter-gateway"
    client_id: str | None = None
    keepalive_secs: int = Field(default=60, ge=5)
    homeassistant_discovery: bool = False
    #: Telemetry waiting for the broker beyond this many messages is dropped (oldest first).
    queue_size: int = Field(default=1000, ge=10)


class Config(Strict):
    gateway: GatewaySection
    buses: dict[Identifier, Bus] = Field(default_factory=dict)
    meters: list[Meter] = Field(default_factory=list)
    uplinks: Uplinks = Field(default_factory=Uplinks)
    mqtt: MqttSection | None = None

    def meter(self, meter_id: str) -> Meter:
        for meter in self.meters:
            if meter.id == meter_id:
                return meter
        raise KeyError(meter_id)


def is_identifier(value: str) -> bool:
    return bool(_ID.match(value))
