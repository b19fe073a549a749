"""Building blocks shared by every config model, so each section's model can live next to its
code (an uplink's config in its own folder) without importing gateway.config in a cycle."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any, Protocol

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ID = re.compile(ID_PATTERN)

Identifier = Annotated[str, Field(pattern=ID_PATTERN)]

#: A key path inside the YAML document, e.g. ("uplinks", "wattics", "meters", "incomer").
KeyPath = tuple[str | int, ...]

#: Old keys seen while validating: (key, what to do instead), collected by `legacy_keys_used`.
_LEGACY_SEEN: ContextVar[list[tuple[str, str]] | None] = ContextVar("legacy_keys", default=None)


def renamed(new: str, *old: str) -> AliasChoices:
    """A key's `validation_alias` when it was renamed: the new name, then old ones, which are
    still accepted (check-config warns about them)."""
    return AliasChoices(new, *old)


class Strict(BaseModel):
    """Every config model: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _note_renamed_keys(cls, data: Any) -> Any:
        seen = _LEGACY_SEEN.get()
        if seen is None or not isinstance(data, dict):
            return data
        for info in cls.model_fields.values():
            alias = info.validation_alias
            if isinstance(alias, AliasChoices):
                new, *old = (str(choice) for choice in alias.choices)
                seen.extend((name, _renamed_to(new)) for name in old if name in data)
        return data


def _renamed_to(new: str) -> str:
    return f"renamed {new!r} (the old name still works)"


def note_legacy_key(key: str, advice: str) -> None:
    """Record that an old key was used, and what to do instead (check-config warns)."""
    seen = _LEGACY_SEEN.get()
    if seen is not None:
        seen.append((key, advice))


def obsolete_key(data: Any, key: str, why: str) -> Any:
    """Drop a key that no longer does anything (noting why), for a `mode="before"` validator."""
    if not isinstance(data, dict) or key not in data:
        return data
    note_legacy_key(key, f"no longer used: {why}; remove it")
    return {k: v for k, v in data.items() if k != key}


def milliseconds_renamed(data: Any, old: str, new: str) -> Any:
    """A `<name>_ms` key renamed `<name>_secs`: its value (a number of ms) is converted, so a
    config written before the rename keeps its meaning. For a `mode="before"` validator."""
    if not isinstance(data, dict) or old not in data:
        return data
    value = data[old]
    number = isinstance(value, int | float) and not isinstance(value, bool)
    converted = value / 1000 if number else value
    note_legacy_key(old, _renamed_to(new) + ", in seconds: 1.75ms or 0.00175")
    return {**{k: v for k, v in data.items() if k != old}, new: data.get(new, converted)}


@contextmanager
def legacy_keys_used() -> Iterator[list[tuple[str, str]]]:
    """Collect (old key, advice) for the old keys used while validating inside this block."""
    seen: list[tuple[str, str]] = []
    token = _LEGACY_SEEN.set(seen)
    try:
        yield seen
    finally:
        _LEGACY_SEEN.reset(token)


class UplinkConfig(Strict):
    """An uplink's config. `meter_references` lets the loader check every meter id it names."""

    def meter_references(self) -> Iterator[tuple[KeyPath, str]]:
        """(key path relative to this section, meter id) for every meter the section names."""
        return iter(())


class GatewayFacts(Protocol):
    """What plugins may know of the `gateway:` section (gateway.config.schema.GatewayConfig)."""

    @property
    def id(self) -> str: ...

    @property
    def timezone(self) -> str: ...


def is_identifier(value: str) -> bool:
    return bool(_ID.match(value))
