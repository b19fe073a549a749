"""Building blocks shared by every config model, so each section's model can live next to its
code (an uplink's config in its own folder) without importing gateway.config in a cycle."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any, Protocol
from urllib.parse import urlsplit

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, model_validator

from core.channels import CHANNEL_UNITS

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

    def site_problems(self, gateway: GatewayFacts) -> Iterator[tuple[KeyPath, str]]:
        """(key path relative to this section, why) for settings that do not fit the site
        (its time zone, say): the loader reports each at its line."""
        return iter(())


class GatewayFacts(Protocol):
    """What plugins may know of the `gateway:` section (gateway.config.schema.GatewayConfig)."""

    @property
    def id(self) -> str: ...

    @property
    def timezone(self) -> str: ...


def _known_channel(value: str) -> str:
    if value not in CHANNEL_UNITS:
        raise ValueError(f"unknown channel {value!r} (see docs/channels.md)")
    return value


#: A canonical channel name (core.channels), e.g. `energy_active_import`.
Channel = Annotated[str, AfterValidator(_known_channel)]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def service_url(value: str) -> str:
    """A cloud service's address: https://, credentials never in it. Plain http:// only to a
    loopback address (a local fake, a proxy on this box): the services refuse it, and a key
    or password sent in the clear on the site's network is a key given away."""
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("must be an https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "must not contain credentials (user:password@): give them in the section's own "
            "keys, where they are kept secret"
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            "must be https:// (the service refuses plain http; http:// is allowed only to a "
            "loopback address such as 127.0.0.1)"
        )
    return value


#: A service URL as written (see `service_url`).
ServiceUrl = Annotated[str, AfterValidator(service_url)]
#: A service's base URL: paths are appended to it, so a trailing "/" is dropped.
ServiceBaseUrl = Annotated[str, AfterValidator(lambda value: service_url(value).rstrip("/"))]


def is_identifier(value: str) -> bool:
    return bool(_ID.match(value))
