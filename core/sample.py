"""The record that flows from drivers through the store to uplinks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one meter at one instant.

    `ts_ms` is UTC milliseconds since the epoch: an integer so that ordering and equality are
    exact and the store needs no parsing. `values` maps canonical channel names
    (core.channels) to floats in normalised units. `flags` carries quality marks
    (e.g. "clock_unsynced", "counter_reset") that uplinks may act on.
    """

    meter: str
    ts_ms: int
    values: Mapping[str, float]
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def ts(self) -> datetime:
        return datetime.fromtimestamp(self.ts_ms / 1000, tz=UTC)

    @staticmethod
    def ms_from(ts: datetime) -> int:
        if ts.tzinfo is None:
            raise ValueError("naive datetime: samples are stamped in UTC")
        return round(ts.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class StoredSample:
    """A sample as read back from the store, with its position in the append-only log."""

    rowid: int
    sample: Sample

    @property
    def ts_ms(self) -> int:
        return self.sample.ts_ms
