"""What a configured meter and bus are: the `meters:` entries and the `buses:` union.

The drivers own these models (a driver needs a meter's unit, map and timeouts, not the rest
of the config); gateway.config.schema composes them with the gateway's own sections. The
checks pydantic cannot make are drivers.checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Protocol

from pydantic import AfterValidator, Field, PrivateAttr

from core.config_base import Identifier, renamed
from core.durations import Seconds
from drivers.modbus.config import (
    ModbusRtuBusConfig,
    ModbusRtuOverTcpBusConfig,
    ModbusTcpBusConfig,
)
from drivers.serial.config import (
    DsmrP1BusConfig,
    Iec62056BusConfig,
    SerialMeterFields,
    SmlBusConfig,
)

#: The shortest meter interval: below it a read (and its log and store work) would outrun any
#: real line, and a stop would wait behind a flood of ticks (docs/configuration.md).
MIN_INTERVAL_SECS = 0.1


def _interval(seconds: float) -> float:
    if seconds < MIN_INTERVAL_SECS:
        raise ValueError(f"at least {MIN_INTERVAL_SECS * 1000:g}ms (no meter line reads faster)")
    return seconds


#: Every bus type, told apart by its `type` key.
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
    #: drivers/modbus/registers/SCHEMA.md. The loader validates and resolves it
    #: (drivers.modbus.maps).
    register_map: str | dict[str, Any] | None = None
    #: The map `register_map` resolved to, set by the config loader (drivers.modbus.maps).
    _resolved_map: object = PrivateAttr(default=None)
    #: How often the meter is read, aligned to the wall clock (a 60 s meter reads at :00).
    interval_secs: Annotated[Seconds, AfterValidator(_interval)] = Field(
        default=60.0, validation_alias=renamed("interval_secs", "interval")
    )
    #: Per-read timeout; defaults to the bus timeout.
    timeout_secs: Seconds | None = None
    #: An offline meter (3 failed reads in a row) is retried after max(interval, this), then
    #: at doubling delays up to offline_retry_max_secs; the first success restores its
    #: normal schedule. Spares a shared line the timeouts of a unit that is gone.
    offline_retry_secs: Seconds = 60.0
    offline_retry_max_secs: Seconds = 300.0
    #: The most power the meter can measure (W). A Wh/varh counter rising faster than this
    #: (plus 5 minutes of it, for coarse registers) is flagged `counter_jump`; none: no check.
    max_power_w: float | None = Field(default=None, gt=0)


class MeterSetup(Protocol):
    """The part of a config the drivers read: its buses and meters (gateway's Config is one)."""

    @property
    def buses(self) -> Mapping[str, BusConfig]: ...

    @property
    def meters(self) -> Sequence[MeterConfig]: ...
