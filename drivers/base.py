"""What the poller needs from any meter, whatever its protocol."""

from __future__ import annotations

from typing import Protocol


class MeterReadError(Exception):
    """A read failed. `kind` is a short counter name: timeout, connection, exception, garbage."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class MeterReader(Protocol):
    """Reads one meter. Knows its protocol and register map; knows nothing about clouds."""

    meter_id: str

    async def read(self) -> dict[str, float]:
        """One complete reading: canonical channel -> value in normalised units.

        Raises MeterReadError on any failure (never a library exception), so the poller can
        count failures by kind without knowing the protocol.
        """
        ...
