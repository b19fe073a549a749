"""Modbus bus configs -> buses (registered in drivers.registry by drivers.modbus.config)."""

from __future__ import annotations

from core.health import BusHealth
from drivers.modbus.config import (
    ModbusRtuBusConfig,
    ModbusRtuOverTcpBusConfig,
    ModbusTcpBusConfig,
)
from drivers.modbus.transports import ModbusRtuBus, ModbusRtuOverTcpBus, ModbusTcpBus


def tcp_bus(
    name: str, config: ModbusTcpBusConfig, *, timeout_secs: float, health: BusHealth | None
) -> ModbusTcpBus:
    return ModbusTcpBus(
        name,
        config.host,
        config.port,
        timeout_secs=timeout_secs,
        reconnect_max_secs=config.reconnect_max_secs,
        health=health,
    )


def rtu_bus(
    name: str, config: ModbusRtuBusConfig, *, timeout_secs: float, health: BusHealth | None
) -> ModbusRtuBus:
    return ModbusRtuBus(
        name,
        config.port,
        baudrate=config.baudrate,
        parity=config.parity,
        stopbits=config.stopbits,
        bytesize=config.bytesize,
        timeout_secs=timeout_secs,
        reconnect_max_secs=config.reconnect_max_secs,
        inter_frame_gap_secs=config.inter_frame_gap_secs,
        health=health,
    )


def rtu_over_tcp_bus(
    name: str, config: ModbusRtuOverTcpBusConfig, *, timeout_secs: float, health: BusHealth | None
) -> ModbusRtuOverTcpBus:
    return ModbusRtuOverTcpBus(
        name,
        config.host,
        config.port,
        timeout_secs=timeout_secs,
        reconnect_max_secs=config.reconnect_max_secs,
        inter_frame_gap_secs=config.inter_frame_gap_secs,
        health=health,
    )
