"""The gate that stops every stream of a client while its credentials are refused.

Invariant: while paused, exactly one stream (the prober, the first that saw the refusal) sends,
every `probe_secs`; the others wait for the gate to open. A success reopens it for all.
"""

from __future__ import annotations

import asyncio

from gateway.clock.clocks import Clock


class AuthGate:
    """Every stream stops while credentials are refused; the stream that saw it first probes."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.prober: str | None = None

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    def close(self, stream: str) -> bool:
        """Pause; True if this call started the pause."""
        if self.paused:
            return False
        self._open.clear()
        self.prober = stream
        return True

    def reopen(self) -> bool:
        """Resume; True if the uplink was paused."""
        if not self.paused:
            return False
        self.prober = None
        self._open.set()
        return True

    async def wait_turn(self, stream: str, probe_secs: float, clock: Clock) -> None:
        """Return when `stream` may send: the gate is open, or it is the prober's turn."""
        while self.paused:
            if self.prober == stream:
                await clock.sleep(probe_secs)
                return
            await self._open.wait()
