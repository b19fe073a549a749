"""Readings that carry the device's own measurement time.

A DSMR P1 telegram gives its gas (water, heat) reading with the time the M-Bus device
captured it (hourly or every 5 minutes), not the time we read the port. A reader that knows
such a time implements `read_stamped()`; the poller then stamps the sample with it (and stores
nothing when the device has not measured again since the last sample). Every other reader
keeps the plain `MeterReader.read()` and is stamped with the poll boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from drivers.base import MeterReader


@dataclass(frozen=True, slots=True)
class StampedReading:
    values: Mapping[str, float]
    #: When the device measured these values, UTC epoch milliseconds; None: unknown (the
    #: poller stamps the poll time).
    ts_ms: int | None


@runtime_checkable
class StampedReader(Protocol):
    meter_id: str

    async def read(self) -> dict[str, float]: ...

    async def read_stamped(self) -> StampedReading:
        """Like `read()`, with the device's own time. Raises MeterReadError likewise."""
        ...


async def read_with_time(reader: MeterReader) -> tuple[dict[str, float], int | None]:
    """(values, the device's measurement time or None) from any reader: `read_stamped()`
    where the reader knows its device's time, else `read()`."""
    if isinstance(reader, StampedReader):
        reading = await reader.read_stamped()
        return dict(reading.values), reading.ts_ms
    return await reader.read(), None
