"""What the poller needs from any meter, whatever its protocol, and what every bus shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Protocol, Self


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


class Bus(Protocol):
    """One physical line or endpoint and the meters on it (drivers.modbus, drivers.serial):
    opened on first use, closed by `aclose()` or leaving `async with`; safe to close twice."""

    name: str

    def describe(self) -> str:
        """For logs and commands: the line and its settings."""
        ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class AsyncClosable(ABC):
    """A bus or line that holds a connection or port: `async with` it, and leaving closes it."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release the connection or port for good; closing twice is harmless."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
