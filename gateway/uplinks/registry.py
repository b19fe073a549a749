"""Uplink plugins: `uplinks.<name>` -> the builder of its runtime uplink (core.registry).

Each uplink's config module registers "module:build_uplink" here, so the daemon builds every
configured uplink through `build_uplinks` and adding an uplink never touches the daemon; an
unconfigured uplink's code is never imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from core.config_base import GatewayFacts, UplinkConfig
from core.health import Health
from core.registry import Registry
from gateway.store.async_store import AsyncStore
from gateway.uplinks.base import Uplink


class UplinkSite(Protocol):
    """The config as uplinks see it (gateway.config.schema.Config is one)."""

    @property
    def gateway(self) -> GatewayFacts: ...

    @property
    def uplinks(self) -> Iterable[tuple[str, UplinkConfig | None]]: ...


@dataclass(frozen=True)
class UplinkContext:
    """What every uplink may use besides its own config section."""

    config: UplinkSite
    store: AsyncStore
    health: Health


UplinkBuilder = Callable[[UplinkConfig, UplinkContext], Uplink]

UPLINKS: Registry[UplinkBuilder] = Registry("uplink")


def build_uplinks(context: UplinkContext) -> list[Uplink]:
    uplinks: list[Uplink] = []
    for name, section in context.config.uplinks:
        if section is not None:
            uplinks.append(UPLINKS.get(name)(section, context))
    return uplinks
