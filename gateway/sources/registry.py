"""Source plugins: `sources.<name>` -> the builder of its runtime source (core.registry).

Each source's config module registers "module:build_source" here, so the daemon builds every
configured source through `build_sources` and adding one never touches the daemon; an
unconfigured source's code is never imported.
"""

from __future__ import annotations

from collections.abc import Callable

from core.registry import Registry
from gateway.sources.base import Source, SourceConfig, SourceContext

SourceBuilder = Callable[[SourceConfig, SourceContext], Source]

SOURCES: Registry[SourceBuilder] = Registry("source")


def build_sources(context: SourceContext) -> list[Source]:
    return [
        build(section, context) for build, section in SOURCES.configured(context.config.sources)
    ]
