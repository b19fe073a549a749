"""Config -> buses and readers. Builds, never connects: the first read opens each line."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from core.health import BusHealth, Health
from drivers.base import MeterReader
from drivers.config import BusConfig, MeterConfig, MeterSetup
from drivers.modbus.bus import ModbusBus
from drivers.modbus.maps import SUNSPEC_MODEL, meter_register_map
from drivers.modbus.reader import ModbusReader
from drivers.registry import BUSES
from drivers.serial.lines import SerialLine

__all__ = ["SUNSPEC_MODEL", "build_bus", "build_reader", "bus_timeout", "open_readers"]


def build_bus(
    name: str,
    bus: BusConfig,
    *,
    timeout_secs: float | None = None,
    health: BusHealth | None = None,
) -> ModbusBus | SerialLine:
    """One bus for a config entry; `timeout_secs` overrides the configured transport timeout."""
    timeout = bus.timeout_secs if timeout_secs is None else timeout_secs
    built = BUSES.get(bus.type)(name, bus, timeout_secs=timeout, health=health)
    if not isinstance(built, ModbusBus | SerialLine):
        raise TypeError(f"bus type {bus.type}: built a {type(built).__name__}, not a bus")
    return built


def build_reader(
    meter: MeterConfig, bus: ModbusBus | SerialLine, bus_config: BusConfig
) -> MeterReader:
    """The reader of one configured meter on its (already built) bus.

    A Modbus meter is read with its built-in or user map (drivers.modbus.maps). `model:
    sunspec` has no fixed map: the reader discovers the device's model chain at its first
    read (drivers.modbus.sunspec) and keeps the map it found.
    """
    if isinstance(bus, SerialLine):
        return bus.reader(meter)
    timeout = meter.timeout_secs or bus_config.timeout_secs
    if meter.model == SUNSPEC_MODEL:
        from drivers.modbus.sunspec import discover_sunspec

        return ModbusReader(
            meter.id, bus, meter.unit, timeout_secs=timeout, discover=discover_sunspec
        )
    register_map = meter_register_map(meter)
    if register_map is None:
        raise ValueError(f"meter {meter.id} has no register map (the config loader checks this)")
    return ModbusReader(meter.id, bus, meter.unit, register_map, timeout_secs=timeout)


def bus_timeout(setup: MeterSetup, name: str) -> float:
    """A bus's transport timeout: the longest of its own and its meters' read timeouts."""
    meters = [m for m in setup.meters if m.bus == name]
    return max(
        [setup.buses[name].timeout_secs] + [m.timeout_secs for m in meters if m.timeout_secs]
    )


@asynccontextmanager
async def open_readers(
    setup: MeterSetup, *, health: Health | None = None
) -> AsyncIterator[dict[str, MeterReader]]:
    """One reader per meter (keyed by meter id), one bus per config bus that a meter uses.

    A meter's `timeout_secs` bounds each of its transactions (default: its bus's); the bus's
    transport timeout is the longest of those so it never cuts a meter short. Each bus counts
    its traffic in `health.buses[<name>]` when `health` is given. Every bus is closed on exit.
    """
    used = list(dict.fromkeys(meter.bus for meter in setup.meters))
    async with AsyncExitStack() as stack:
        buses: dict[str, ModbusBus | SerialLine] = {}
        for name in used:
            buses[name] = await stack.enter_async_context(
                build_bus(
                    name,
                    setup.buses[name],
                    timeout_secs=bus_timeout(setup, name),
                    health=health.bus(name) if health is not None else None,
                )
            )
        yield {
            meter.id: build_reader(meter, buses[meter.bus], setup.buses[meter.bus])
            for meter in setup.meters
        }
