"""A daily call budget shared by every stream of one uplink (EnerKey: 40 000 calls per 24 h).

Invariants:
1. Calls start only through `acquire()`. A token bucket of `burst` tokens, refilled at
   (limit - burst) / window per second, means that ANY window of `window_secs` holds at most
   burst + (limit - burst) = limit call starts from this process: the limit is never reached
   by us alone, whatever the number of meters. Waiters are served in arrival order (one lock).
2. The server's count wins when it is lower: when `X-Rate-Limit` (calls left) falls to
   `low_water`, the burst is withdrawn and calls go at the steady rate only; at 0 nobody
   calls for one steady interval; after a 429 nobody calls until its Retry-After (or the
   caller's backoff) has passed.
3. The budget outlives the process: `snapshot()` (wall-clock times) is kept in the store after
   every call (gateway.uplinks.enerkey.budget_store) and `restore()`d at start, so a restart
   refills only by the time that passed, never to a fresh burst; a clock set back refills
   nothing (never more calls than the limit, whatever the clock did).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from gateway.clock.clocks import Clock

#: Float slack on a token: a refill that lands a hair under 1.0 must not wait for nothing.
_EPSILON = 1e-9


@dataclass(frozen=True)
class BudgetSnapshot:
    """What a restart must know, in wall-clock epoch seconds (invariant 3)."""

    at: float
    tokens: float
    blocked_until: float
    #: Start times of the calls in the last window (for `calls_in_window`).
    calls: tuple[float, ...] = ()
    remaining: dict[str, int] = field(default_factory=dict)


class RateBudget:
    def __init__(
        self,
        limit: int,
        burst: int,
        clock: Clock,
        *,
        window_secs: float = 86_400.0,
        low_water: int | None = None,
    ) -> None:
        if not 0 < burst < limit:
            raise ValueError("need 0 < burst < limit")
        self.limit = limit
        self.burst = burst
        self.window_secs = window_secs
        self.low_water = limit // 10 if low_water is None else low_water
        self._clock = clock
        self._rate = (limit - burst) / window_secs  # tokens per second
        self._tokens = float(burst)
        self._capacity = float(burst)
        self._updated = clock.monotonic()
        self._blocked_until = 0.0
        self._lock = asyncio.Lock()
        self._recent: deque[float] = deque()
        #: The same calls' wall-clock times (what a snapshot keeps).
        self._recent_wall: deque[float] = deque()
        #: Calls left per key label, as the server last said (X-Rate-Limit).
        self.remaining: dict[str, int] = {}
        #: Calls that waited for the budget, and the seconds they waited in all.
        self.waits = 0
        self.waited_secs = 0.0

    @property
    def steady_interval_secs(self) -> float:
        """Seconds between calls when the burst is used up (86 400 / 39 900 ≈ 2.17 s)."""
        return 1.0 / self._rate

    def _refill(self, now: float) -> None:
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
            self._updated = now

    async def acquire(self) -> None:
        """Wait until a call may start, and count it."""
        async with self._lock:
            waited = False
            start = self._clock.monotonic()
            while True:
                now = self._clock.monotonic()
                self._refill(now)
                wait = self._blocked_until - now
                if self._tokens < 1.0 - _EPSILON:
                    wait = max(wait, (1.0 - self._tokens) / self._rate)
                if wait <= 0:
                    break
                waited = True
                await self._clock.sleep(wait)
            self._tokens -= 1.0
            self._recent.append(now)
            self._recent_wall.append(self._clock.time())
            self.calls_in_window()  # keeps the deque to one window
            if waited:
                self.waits += 1
                self.waited_secs += now - start

    def observe(self, label: str, remaining: int) -> None:
        """The server says `remaining` calls are left for key `label` in its 24 h window."""
        self.remaining[label] = remaining
        now = self._clock.monotonic()
        self._refill(now)
        if remaining <= self.low_water:
            self._capacity = min(1.0, float(self.burst))
            self._tokens = min(self._tokens, self._capacity)
        else:
            self._capacity = float(self.burst)
        if remaining <= 0:
            self.block(self.steady_interval_secs)

    def block(self, seconds: float) -> None:
        """No call starts for `seconds` (a 429's Retry-After)."""
        until = self._clock.monotonic() + max(0.0, seconds)
        self._blocked_until = max(self._blocked_until, until)

    def facts(self, label: str | None) -> dict[str, object]:
        """For health: calls left (of key `label`, and per key) and calls in the window."""
        facts: dict[str, object] = {"calls_left_by_key": dict(self.remaining)}
        if label in self.remaining:
            facts["calls_left"] = self.remaining[label]
        facts["calls_24h"] = self.calls_in_window()
        return facts

    def available(self) -> float:
        """Tokens now (a call may start at once when >= 1)."""
        self._refill(self._clock.monotonic())
        return self._tokens

    def snapshot(self) -> BudgetSnapshot:
        now = self._clock.monotonic()
        self._refill(now)
        self.calls_in_window()
        wall = self._clock.time()
        return BudgetSnapshot(
            at=wall,
            tokens=self._tokens,
            blocked_until=wall + max(0.0, self._blocked_until - now),
            calls=tuple(self._recent_wall),
            remaining=dict(self.remaining),
        )

    def restore(self, saved: BudgetSnapshot) -> None:
        """Go on from a snapshot of an earlier run (invariant 3)."""
        now, wall = self._clock.monotonic(), self._clock.time()
        for label, left in saved.remaining.items():
            self.observe(label, left)
        elapsed = max(0.0, wall - saved.at)
        self._tokens = min(self._capacity, max(0.0, saved.tokens) + elapsed * self._rate)
        self._updated = now
        if saved.blocked_until > wall:
            self.block(saved.blocked_until - wall)
        calls = sorted(start for start in saved.calls if start <= wall)
        self._recent = deque(now - (wall - start) for start in calls)
        self._recent_wall = deque(calls)
        self.calls_in_window()

    def calls_in_window(self) -> int:
        """Calls started in the last window (by this run, or restored from an earlier one)."""
        horizon = self._clock.monotonic() - self.window_secs
        recent = self._recent
        while recent and recent[0] <= horizon:
            recent.popleft()
            self._recent_wall.popleft()
        return len(recent)
