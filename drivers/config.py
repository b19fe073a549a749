"""What a configured meter and bus are: the `meters:` entries and the `buses:` union.

The drivers own these models (a driver needs a meter's unit, map and timeouts, not the rest
of the config); gateway.config.schema composes them with the gateway's own sections. The
checks pydantic cannot make (a meter naming a bus that exists, keys that only some bus types
take, a usable register map) are `check_meters`, run by the config loader.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any, Protocol

from pydantic import Field, PrivateAttr

from core.config_base import Identifier, KeyPath, renamed
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
    is_serial_bus,
    serial_cross_check,
)

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
    interval_secs: Seconds = Field(
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


def check_meters(setup: MeterSetup) -> Iterator[tuple[KeyPath, str]]:
    """Relations between meters and buses that pydantic cannot see, by key path."""
    from drivers.modbus.maps import model_problem

    seen: set[str] = set()
    for index, meter in enumerate(setup.meters):
        if meter.id in seen:
            yield ("meters", index, "id"), f"meter id {meter.id!r} is used twice"
        seen.add(meter.id)
        if meter.bus not in setup.buses:
            yield ("meters", index, "bus"), f"no bus named {meter.bus!r} under buses"
        elif is_serial_bus(setup.buses[meter.bus]):
            # D0/P1/SML meters need no register map; serial_cross_check checks the rest
            if meter.register_map is not None:
                yield (
                    ("meters", index, "register_map"),
                    "register_map applies to Modbus meters only",
                )
        elif (problem := model_problem(meter)) is not None:
            key, message = problem
            yield ("meters", index, key) if key else ("meters", index), message
    yield from serial_cross_check(setup.buses, setup.meters)
