"""The contract every uplink keeps with the daemon."""

from __future__ import annotations

from typing import Protocol


class Uplink(Protocol):
    #: Name used for cursors, health and MQTT topics (e.g. "wattics").
    name: str

    def streams(self) -> dict[str, str]:
        """stream id -> meter id: what this uplink delivers (one cursor per stream)."""
        ...

    async def run(self) -> None:
        """Deliver forever from the cursors forward until cancelled.

        On cancellation, finish or abandon the request in flight (never advance a cursor past
        what the service acknowledged) and return. Never raises for a cloud's misbehaviour:
        those are retried, parked or reported through core.health.
        """
        ...
