"""The contract every uplink keeps with the daemon, and the keys every stream uplink shares."""

from __future__ import annotations

from typing import Protocol

from pydantic import Field

from core.config_base import UplinkConfig
from core.durations import Seconds, SecondsOrZero


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


class StreamUplinkConfig(UplinkConfig):
    """The keys of every stream uplink (gateway.uplinks.delivery): Wattics, EnerKey."""

    #: Per request.
    timeout_secs: Seconds = 30.0
    #: Streams sent at the same time (each stream stays in order).
    max_concurrency: int = Field(default=4, ge=1, le=64)
    #: An item the service refuses as malformed (another 4xx) this many times is parked in
    #: the dead-letter table.
    max_attempts_rejected: int = Field(default=3, ge=1)
    #: Retries back off from this, doubling with jitter, up to retry_max_secs.
    retry_initial_secs: Seconds = 1.0
    retry_max_secs: Seconds = 300.0
    #: While credentials are refused (401/403), or a path is unknown, try again this often.
    auth_probe_secs: Seconds = 300.0
    #: At shutdown, a request in flight may finish for this long (then it is abandoned and
    #: sent again next start).
    shutdown_grace_secs: SecondsOrZero = 2.0
