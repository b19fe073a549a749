"""The one way anything here waits before trying again: capped exponential backoff, jittered.

Used by every retry: uplinks and sources (HTTP), Modbus and serial transports (reconnects),
the MQTT monitor (broker reconnects), and the poller's retries of an offline meter.

Jitter spreads out many clients of one server (clouds, the MQTT broker). A gateway's own
meter lines have no crowd to spread: their transports and the poller keep a fixed doubling
schedule (`rng=no_jitter`); the MQTT monitor keeps at least half of each delay (`equal_jitter`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter; a server's Retry-After wins when it is longer.

    Delay n (from 0) is uniform in [0, min(max_secs, initial_secs * multiplier**n)]
    (AWS "full jitter": many clients recovering at once spread out instead of stampeding).
    A Retry-After is obeyed as a minimum, capped at `max_retry_after_secs` so that a broken
    server cannot park us for days. `rng` (uniform in [0, 1)) is injectable for tests;
    `no_jitter` makes every delay its ceiling, `equal_jitter` keeps it in [ceiling / 2, ceiling].
    """

    initial_secs: float
    max_secs: float
    multiplier: float = 2.0
    max_retry_after_secs: float = 3600.0
    rng: Callable[[], float] = field(default=random.random, repr=False)
    attempt: int = 0

    def ceiling(self) -> float:
        """Upper bound of the next jittered delay."""
        exponent = min(self.attempt, 64)  # avoid float overflow after very long outages
        return min(self.max_secs, self.initial_secs * self.multiplier**exponent)

    def next_delay(self, retry_after: float | None = None) -> float:
        delay = self.rng() * self.ceiling()
        self.attempt += 1
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after_secs))
        return delay

    def reset(self) -> None:
        self.attempt = 0


def no_jitter() -> float:
    """A `Backoff.rng` for a schedule that must not be jittered: every delay is the ceiling."""
    return 1.0


def equal_jitter() -> float:
    """A `Backoff.rng` that spreads delays over the upper half, [ceiling / 2, ceiling]: never
    much sooner than the schedule says."""
    return random.uniform(0.5, 1.0)
