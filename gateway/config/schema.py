"""Config models: the one YAML file, validated strictly (a typo is an error, never ignored).

Loading, `${VAR}` substitution and file:line error reporting live in gateway.config.loader;
this module only says what a valid config is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from core.config_base import (
    Identifier,
    Strict,
)
from core.durations import Seconds
from drivers.serial.config import (
    DsmrP1BusConfig,
    Iec62056BusConfig,
    SerialMeterFields,
    SmlBusConfig,
)
from gateway.sources.locus.config import LocusConfig
from gateway.sources.mts.config import MtsConfig
from gateway.uplinks.enerkey.config import EnerKeyConfig
from gateway.uplinks.pts.config import PtsConfig
from gateway.uplinks.wattics.config import (
    WatticsConfig,
)


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

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from exc
        return value


class ModbusTcpBusConfig(Strict):
    type: Literal["modbus-tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    timeout_secs: float = Field(default=3.0, gt=0)
    reconnect_max_secs: float = Field(default=60.0, gt=0)


class ModbusRtuBusConfig(Strict):
    type: Literal["modbus-rtu"]
    #: A device path; prefer the stable /dev/serial/by-id/... link of a USB adapter.
    port: str
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_secs: float = Field(default=1.0, gt=0)
    reconnect_max_secs: float = Field(default=60.0, gt=0)
    #: Silence kept on the line between transactions; default 3.5 character times at this
    #: baud rate (1.75 ms above 19200 baud, as the Modbus serial-line spec says).
    inter_frame_gap_ms: float | None = Field(default=None, ge=0, le=1000)


class ModbusRtuOverTcpBusConfig(Strict):
    """A serial-to-Ethernet converter forwarding raw RTU frames (with CRC) over TCP."""

    type: Literal["modbus-rtu-over-tcp"]
    host: str
    port: int = Field(ge=1, le=65535)
    timeout_secs: float = Field(default=1.0, gt=0)
    reconnect_max_secs: float = Field(default=60.0, gt=0)
    #: Silence kept between transactions; the converter usually paces its line itself.
    inter_frame_gap_ms: float = Field(default=0.0, ge=0, le=1000)


#: Serial utility-meter buses (D0, DSMR P1, SML) are defined in drivers.serial.config.
BusConfig = Annotated[
    ModbusTcpBusConfig
    | ModbusRtuBusConfig
    | ModbusRtuOverTcpBusConfig
    | Iec62056BusConfig
    | DsmrP1BusConfig
    | SmlBusConfig,
    Field(discriminator="type"),
]


class MeterConfig(SerialMeterFields):
    id: Identifier
    bus: str
    unit: int = Field(default=1, ge=0, le=247)
    #: A built-in register map; on Modbus buses this or `register_map` is required; not used
    #: on serial (D0/P1/SML) ones.
    model: str | None = None
    #: Your own register map instead of a built-in one: a map file's path (relative to this
    #: config file's directory) or the map itself inline, in the schema of
    #: drivers/registers/SCHEMA.md. The loader validates and resolves it (drivers.modbus.maps).
    register_map: str | dict[str, Any] | None = None
    #: The map `register_map` resolved to, set by the config loader (drivers.modbus.maps).
    _resolved_map: object = PrivateAttr(default=None)
    interval: Seconds = 60.0
    #: Per-read timeout; defaults to the bus timeout.
    timeout_secs: float | None = Field(default=None, gt=0)
    #: An offline meter (3 failed reads in a row) is retried after max(interval, this), then
    #: at doubling delays up to offline_retry_max_secs; the first success restores its
    #: normal schedule. Spares a shared line the timeouts of a unit that is gone.
    offline_retry_secs: Seconds = 60.0
    offline_retry_max_secs: Seconds = 300.0
    #: The most power the meter can measure (W). A Wh/varh counter rising faster than this
    #: (plus 5 minutes of it, for coarse registers) is flagged `counter_jump`; none: no check.
    max_power_w: float | None = Field(default=None, gt=0)


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
    keepalive_secs: int = Field(default=60, ge=5)
    #: How long to wait for the broker's CONNACK, SUBACK or PUBACK before giving up the connection.
    timeout_secs: float = Field(default=10.0, gt=0)
    #: Retained state topics are re-published this often (and on every reconnect).
    publish_interval_secs: float = Field(default=10.0, ge=0.05)
    #: Reconnect backoff doubles (with jitter) up to this.
    reconnect_max_secs: float = Field(default=30.0, gt=0)
    homeassistant_discovery: bool = False
    discovery_prefix: str = "homeassistant"
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

    @field_validator("topic_prefix", "discovery_prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        return _topic_prefix(value)


class Config(Strict):
    gateway: GatewayConfig
    buses: dict[Identifier, BusConfig] = Field(default_factory=dict)
    meters: list[MeterConfig] = Field(default_factory=list)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    uplinks: UplinksConfig = Field(default_factory=UplinksConfig)
    mqtt: MqttConfig | None = None

    def meter(self, meter_id: str) -> MeterConfig:
        for meter in self.meters:
            if meter.id == meter_id:
                return meter
        raise KeyError(meter_id)
