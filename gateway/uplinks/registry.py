"""Uplink plugins: `uplinks.<name>` -> the builder of its runtime uplink (core.registry).

Each uplink's config module registers "module:build_uplink" here, so the daemon builds every
configured uplink through `build_uplinks` and adding an uplink never touches the daemon; an
unconfigured uplink's code is never imported.
"""

from __future__ import annotations

from collections.abc import Callable

from core.config_base import UplinkConfig
from core.registry import Registry
from gateway.plugins import PluginContext
from gateway.uplinks.base import Uplink

#: What every uplink may use besides its own config section.
UplinkContext = PluginContext


UplinkBuilder = Callable[[UplinkConfig, UplinkContext], Uplink]

UPLINKS: Registry[UplinkBuilder] = Registry("uplink")


def build_uplinks(context: UplinkContext) -> list[Uplink]:
    return [
        build(section, context) for build, section in UPLINKS.configured(context.config.uplinks)
    ]
