"""Config -> buses and readers. Builds, never connects: the first read opens each line."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from drivers.base import MeterReader
from drivers.modbus import ModbusBus, ModbusReader, ModbusRtuBus, ModbusTcpBus
from drivers.register_map import load_builtin
from gateway import config as cfg


def build_bus(name: str, bus: cfg.Bus, *, timeout_secs: float | None = None) -> ModbusBus:
    """One bus for a config entry; `timeout_secs` overrides the configured transport timeout."""
    timeout = bus.timeout_secs if timeout_secs is None else timeout_secs
    if isinstance(bus, cfg.ModbusTcpBus):
        return ModbusTcpBus(
            name,
            bus.host,
            bus.port,
            timeout_secs=timeout,
            reconnect_max_secs=bus.reconnect_max_secs,
        )
    if isinstance(bus, cfg.ModbusRtuBus):
        return ModbusRtuBus(
            name,
            bus.port,
            baudrate=bus.baudrate,
            parity=bus.parity,
            stopbits=bus.stopbits,
            bytesize=bus.bytesize,
            timeout_secs=timeout,
            reconnect_max_secs=bus.reconnect_max_secs,
        )
    raise TypeError(f"no driver for bus type {type(bus).__name__}")


@asynccontextmanager
async def open_readers(config: cfg.Config) -> AsyncIterator[dict[str, MeterReader]]:
    """One reader per meter (keyed by meter id), one bus per config bus that a meter uses.

    A meter's `timeout_secs` bounds each of its transactions (default: its bus's); the bus's
    transport timeout is the longest of those so it never cuts a meter short. Every bus is
    closed on exit.
    """
    users: dict[str, list[cfg.Meter]] = {}
    for meter in config.meters:
        users.setdefault(meter.bus, []).append(meter)
    async with AsyncExitStack() as stack:
        buses: dict[str, ModbusBus] = {}
        for name, meters in users.items():
            bus_config = config.buses[name]
            longest = max(
                [bus_config.timeout_secs] + [m.timeout_secs for m in meters if m.timeout_secs]
            )
            buses[name] = await stack.enter_async_context(
                build_bus(name, bus_config, timeout_secs=longest)
            )
        readers: dict[str, MeterReader] = {
            meter.id: ModbusReader(
                meter.id,
                buses[meter.bus],
                meter.unit,
                load_builtin(meter.model),
                timeout_secs=meter.timeout_secs or config.buses[meter.bus].timeout_secs,
            )
            for meter in config.meters
        }
        yield readers
