"""Modbus bus configs -> buses (registered in drivers.registry by drivers.modbus.config)."""

from __future__ import annotations

from typing import TypedDict, Unpack

from core.health import BusHealth
from drivers.modbus.config import (
    ModbusBusConfig,
    ModbusRtuBusConfig,
    ModbusRtuOverTcpBusConfig,
    ModbusTcpBusConfig,
)
from drivers.modbus.transports import ModbusRtuBus, ModbusRtuOverTcpBus, ModbusTcpBus
from drivers.registry import BuildOptions


def tcp_bus(name: str, config: ModbusTcpBusConfig, **options: Unpack[BuildOptions]) -> ModbusTcpBus:
    if config.max_in_flight > 1:
        from drivers.modbus.pipelined import PipelinedTcpBus  # only where configured

        return PipelinedTcpBus(
            name,
            config.host,
            config.port,
            max_in_flight=config.max_in_flight,
            **_common(config, options),
        )
    return ModbusTcpBus(name, config.host, config.port, **_common(config, options))


def rtu_bus(name: str, config: ModbusRtuBusConfig, **options: Unpack[BuildOptions]) -> ModbusRtuBus:
    return ModbusRtuBus(
        name,
        config.port,
        baudrate=config.baudrate,
        parity=config.parity,
        stopbits=config.stopbits,
        bytesize=config.bytesize,
        inter_frame_gap_secs=config.inter_frame_gap_secs,
        **_common(config, options),
    )


def rtu_over_tcp_bus(
    name: str, config: ModbusRtuOverTcpBusConfig, **options: Unpack[BuildOptions]
) -> ModbusRtuOverTcpBus:
    return ModbusRtuOverTcpBus(
        name,
        config.host,
        config.port,
        inter_frame_gap_secs=config.inter_frame_gap_secs,
        **_common(config, options),
    )


class _Common(TypedDict):
    timeout_secs: float
    reconnect_max_secs: float
    health: BusHealth | None


def _common(config: ModbusBusConfig, options: BuildOptions) -> _Common:
    """What every Modbus bus takes from its config and the factory alike."""
    return {
        "timeout_secs": options.get("timeout_secs") or config.timeout_secs,
        "reconnect_max_secs": config.reconnect_max_secs,
        "health": options.get("health"),
    }
