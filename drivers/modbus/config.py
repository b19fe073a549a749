"""Config of Modbus buses: TCP endpoints, RTU lines and RTU-over-TCP converters.

Each bus type registers its builder in drivers.registry.BUSES (imported only when such a bus
is configured); gateway.config puts these models in its `buses:` union (drivers.config).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from core.config_base import Strict, milliseconds_renamed
from core.durations import Seconds, SecondsOrZero
from drivers.registry import BUSES


class ModbusTcpBusConfig(Strict):
    type: Literal["modbus-tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    timeout_secs: Seconds = 3.0
    reconnect_max_secs: Seconds = 60.0
    #: Transactions kept outstanding on the one connection (matched by transaction id); 1
    #: waits for each answer. More only for gateways and devices that queue requests.
    max_in_flight: int = Field(default=1, ge=1, le=16)


class ModbusRtuBusConfig(Strict):
    type: Literal["modbus-rtu"]
    #: A device path; prefer the stable /dev/serial/by-id/... link of a USB adapter.
    port: str
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_secs: Seconds = 1.0
    reconnect_max_secs: Seconds = 60.0
    #: Silence kept on the line between transactions; default 3.5 character times at this
    #: baud rate (1.75 ms above 19200 baud, as the Modbus serial-line spec says).
    inter_frame_gap_secs: SecondsOrZero | None = Field(default=None, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _was_ms(cls, data: Any) -> Any:
        return milliseconds_renamed(data, "inter_frame_gap_ms", "inter_frame_gap_secs")


class ModbusRtuOverTcpBusConfig(Strict):
    """A serial-to-Ethernet converter forwarding raw RTU frames (with CRC) over TCP."""

    type: Literal["modbus-rtu-over-tcp"]
    host: str
    port: int = Field(ge=1, le=65535)
    timeout_secs: Seconds = 1.0
    reconnect_max_secs: Seconds = 60.0
    #: Silence kept between transactions; the converter usually paces its line itself.
    inter_frame_gap_secs: SecondsOrZero = Field(default=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _was_ms(cls, data: Any) -> Any:
        return milliseconds_renamed(data, "inter_frame_gap_ms", "inter_frame_gap_secs")


ModbusBusConfig = ModbusTcpBusConfig | ModbusRtuBusConfig | ModbusRtuOverTcpBusConfig

BUSES.register("modbus-tcp", "drivers.modbus.builders:tcp_bus")
BUSES.register("modbus-rtu", "drivers.modbus.builders:rtu_bus")
BUSES.register("modbus-rtu-over-tcp", "drivers.modbus.builders:rtu_over_tcp_bus")
