"""What every plugin (uplink or source) is given besides its own config section.

Uplinks and sources never import each other (the import-linter contract), so the context
they share lives here, above both and below the daemon that builds them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.config_base import GatewayFacts
from core.health import Health
from gateway.clock.clocks import Clock, SystemClock
from gateway.store.async_store import AsyncStore


class Site(Protocol):
    """The config as plugins see it (gateway.config.schema.Config is one)."""

    @property
    def gateway(self) -> GatewayFacts: ...

    @property
    def uplinks(self) -> Iterable[tuple[str, Any]]: ...

    @property
    def sources(self) -> Iterable[tuple[str, Any]]: ...


@dataclass(frozen=True)
class PluginContext:
    config: Site
    store: AsyncStore
    health: Health
    clock: Clock = field(default_factory=SystemClock)
