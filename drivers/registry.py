"""Bus types -> builders: the drivers' plugin registry (core.registry's one pattern).

Each bus type's config module registers "module:function" here (drivers.modbus.config,
drivers.serial.config); drivers.factory builds every configured bus through it. A builder is
called as `builder(name, config, timeout_secs=..., health=...)` and returns an open-on-first-
use bus: a ModbusBus or a SerialLine (an async context manager either way).
"""

from __future__ import annotations

from typing import Any, Protocol, TypedDict, Unpack

from core.health import BusHealth
from core.registry import Registry
from drivers.base import Bus


class BuildOptions(TypedDict, total=False):
    """What the factory passes every builder: the transport timeout it computed (default: the
    bus's own) and the health record the bus counts its traffic in."""

    timeout_secs: float | None
    health: BusHealth | None


class BusBuilder(Protocol):
    def __call__(self, name: str, config: Any, /, **options: Unpack[BuildOptions]) -> Bus: ...


BUSES: Registry[BusBuilder] = Registry("bus type")
