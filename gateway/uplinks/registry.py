"""Which uplink class serves which `uplinks:` config section: one line per uplink.

The daemon builds every configured uplink through this table, so adding an uplink never
touches the daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.config_base import UplinkConfig
from core.health import Health
from gateway.config.schema import Config
from gateway.store.async_store import AsyncStore
from gateway.uplinks.base import Uplink
from gateway.uplinks.enerkey.config import build_uplink as _enerkey
from gateway.uplinks.pts.config import build_uplink as _pts


@dataclass(frozen=True)
class UplinkContext:
    """What every uplink may use besides its own config section."""

    config: Config
    store: AsyncStore
    health: Health


def _wattics(section: UplinkConfig, context: UplinkContext) -> Uplink:
    from gateway.uplinks.wattics.config import WatticsConfig
    from gateway.uplinks.wattics.uplink import WatticsUplink

    assert isinstance(section, WatticsConfig)
    return WatticsUplink(
        section,
        store=context.store,
        health=context.health,
        timezone=context.config.gateway.timezone,
    )


#: config key under `uplinks:` -> factory. Imports are lazy: an unconfigured uplink costs nothing.
FACTORIES: dict[str, Callable[[UplinkConfig, UplinkContext], Uplink]] = {
    "wattics": _wattics,
    "pts": _pts,
    "enerkey": _enerkey,
}


def build_uplinks(context: UplinkContext) -> list[Uplink]:
    uplinks: list[Uplink] = []
    for name, section in context.config.uplinks:
        if section is not None:
            uplinks.append(FACTORIES[name](section, context))
    return uplinks
