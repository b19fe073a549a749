"""Building blocks shared by every config model, so section models can live in their own
modules (an uplink's config next to its code) without importing gateway.config.schema in a cycle."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ID = re.compile(ID_PATTERN)

Identifier = Annotated[str, Field(pattern=ID_PATTERN)]

#: A key path inside the YAML document, e.g. ("uplinks", "wattics", "meters", "incomer").
KeyPath = tuple[str | int, ...]


class Strict(BaseModel):
    """Every config model: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class UplinkConfig(Strict):
    """An uplink's config. `meter_references` lets the loader check every meter id it names."""

    def meter_references(self) -> Iterator[tuple[KeyPath, str]]:
        """(key path relative to this section, meter id) for every meter the section names."""
        return iter(())


def is_identifier(value: str) -> bool:
    return bool(_ID.match(value))
