"""The one plugin registry: a config `type` (or section name) -> the code that builds it.

Buses (`buses.<name>.type`), uplinks (`uplinks.<name>`) and sources (`sources.<name>`) are
plugins. Each plugin registers itself in its own config module, which the config schema
imports anyway, naming its builder as "package.module:function": the builder's module (and
what it imports, e.g. dsmr-parser, aiohttp) is imported only when such a plugin is
configured. Nothing outside the plugin's own folder lists plugins.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Builders of one kind of plugin (`kind` names it in errors, e.g. "bus type")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._targets: dict[str, str] = {}

    def register(self, name: str, target: str) -> None:
        """`target` is "module:attribute" (the attribute may be dotted: "module:Class.build");
        registering one name for two targets is a bug."""
        module, sep, attribute = target.partition(":")
        if not sep or not module or not attribute:
            raise ValueError(f"{self.kind} {name!r}: target must be 'module:attribute'")
        if self._targets.get(name, target) != target:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._targets[name] = target

    def names(self) -> list[str]:
        return sorted(self._targets)

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def get(self, name: str) -> T:
        """The builder of `name`, importing its module on first use."""
        try:
            target = self._targets[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise KeyError(f"no {self.kind} {name!r} (known: {known})") from None
        module, _, attribute = target.partition(":")
        found: object = importlib.import_module(module)
        for part in attribute.split("."):
            found = getattr(found, part)
        builder: T = found  # type: ignore[assignment]  # the registrant's word for it
        return builder

    def configured(self, sections: Iterable[tuple[str, Any]]) -> Iterator[tuple[T, Any]]:
        """(builder, section) for each configured section of a config's `(name, section)`
        pairs (a pydantic model iterates as such); sections left out (None) are skipped."""
        for name, section in sections:
            if section is not None:
                yield self.get(name), section
