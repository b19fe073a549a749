"""Which source class serves which `sources:` config section: one line per source.

The daemon builds every configured source through this table, so adding a source never
touches the daemon. Imports are lazy: an unconfigured source costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.sources.base import Source, SourceConfig, SourceContext


def _mts(section: SourceConfig, context: SourceContext) -> Source:
    from gateway.sources.mts.source import build_source

    return build_source(section, context)


def _locus(section: SourceConfig, context: SourceContext) -> Source:
    from gateway.sources.locus.source import build_source

    return build_source(section, context)


#: config key under `sources:` -> factory.
FACTORIES: dict[str, Callable[[SourceConfig, SourceContext], Source]] = {
    "mts": _mts,
    "locus": _locus,
}


def build_sources(context: SourceContext) -> list[Source]:
    config = context.config
    sources: list[Source] = []
    for name, section in config.sources:  # type: ignore[attr-defined]
        if section is not None:
            sources.append(FACTORIES[name](section, context))
    return sources
