"""Which stored sample a Wattics datapoint with a registered interval receives, and when.

Wattics expects a datapoint's packets at the interval it was registered with (spec: data
pushed less often than registered is not shown). Meters are polled at their own rate, so
the uplink picks, for every boundary of the datapoint's interval:

- the sample stamped exactly on the boundary (the poller aligns samples to boundaries, so
  with compatible intervals this is the common case and is sent at once);
- else the newest sample at most `tolerance` before the boundary, stamped AT the boundary.
  It is chosen once no better sample can come: when a later sample is stored, or
  `wait_ms` after the boundary (a late read of the boundary sample still wins until then);
- else nothing: a hole, never an invented value.

Every boundary counts, not only the one right after a sample: when samples are missing for
several boundaries (the gateway was stopped or restarted, the meter did not answer), each of
those boundaries within `tolerance` after the newest earlier sample takes that sample. After a
restart the picker resumes from the last boundary it decided and the sample it carried
(`resume`, from what the uplink committed with its cursor), so a restart leaves no hole a
stored sample could fill.

Invariants: decided boundaries strictly increase (a sample at or before the last decided
boundary is passed over: Wattics would discard it as out of order); a boundary is decided at
most once.

Boundaries are on the site's local wall-clock grid (a 1 h datapoint in India gets packets at
local :00, which is UTC :30); for intervals dividing 15 minutes the local and UTC grids are
the same in every zone in use. In the repeated autumn hour the local grid occurs twice; the
two passes are distinct instants, so packets stay strictly increasing and none repeats.
Samples between boundaries are passed over (their cursor advances; nothing is sent).

Pure logic, no I/O: the uplink feeds it samples in store order and sends what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Generic, Protocol, TypeVar


class _Stamped(Protocol):
    @property
    def ts_ms(self) -> int: ...


T = TypeVar("T", bound=_Stamped)


def _offset_ms(ts_ms: int, tz: tzinfo) -> int:
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).astimezone(tz)
    offset = moment.utcoffset()
    return 0 if offset is None else int(offset.total_seconds() * 1000)


def on_grid(ts_ms: int, interval_ms: int, tz: tzinfo) -> bool:
    """Is `ts_ms` a boundary of the local wall-clock grid of `interval_ms`?"""
    return (ts_ms + _offset_ms(ts_ms, tz)) % interval_ms == 0


def next_boundary_ms(ts_ms: int, interval_ms: int, tz: tzinfo) -> int:
    """The first instant at or after `ts_ms` on the local grid of `interval_ms`.

    Offsets are piecewise constant: the answer lies either in the stretch of ts's own offset
    or after a transition, so trying the grid under each of the two offsets suffices.
    """
    candidates: list[int] = []
    offset = _offset_ms(ts_ms, tz)
    for _ in range(3):
        local = ts_ms + offset
        boundary = -(-local // interval_ms) * interval_ms - offset
        if boundary >= ts_ms and on_grid(boundary, interval_ms, tz):
            candidates.append(boundary)
        next_offset = _offset_ms(boundary, tz)
        if next_offset == offset:
            break
        offset = next_offset
    if candidates:
        return min(candidates)
    # A transition on the very grid point: step one interval on and look again.
    return next_boundary_ms(ts_ms + interval_ms, interval_ms, tz)


@dataclass
class IntervalPicker(Generic[T]):
    """Feeds samples in order; yields (sample, stamp) decisions in the same order.

    stamp is the boundary the sample is sent at, or None: passed over, nothing sent. One
    sample may be decided for several boundaries in a row (it fills the ones with no sample
    of their own, within the tolerance).
    """

    interval_ms: int
    tolerance_ms: int
    wait_ms: int
    tz: tzinfo
    _pending: T | None = field(default=None, init=False)
    _pending_boundary: int = field(default=0, init=False)
    #: The newest sample offered (it fills later boundaries within the tolerance).
    _carry: T | None = field(default=None, init=False)
    #: The last boundary decided (sent or left empty): nothing at or before it is sent again.
    _last_boundary: int | None = field(default=None, init=False)

    @property
    def last_boundary_ms(self) -> int | None:
        """The last boundary a packet was decided for (committed with the cursor)."""
        return self._last_boundary

    def resume(self, last_boundary_ms: int | None, carry: T | None) -> None:
        """Continue after a restart: the last boundary decided, and the sample at the
        committed cursor (the newest sample offered before the stop)."""
        self._last_boundary = last_boundary_ms
        self._carry = carry

    def _decide(self, item: T, boundary: int) -> tuple[T, int]:
        self._last_boundary = boundary
        return item, boundary

    def _fill(self, before_ms: int) -> list[tuple[T, int | None]]:
        """Boundaries after the last decided one and before `before_ms` that no sample of
        their own can reach any more, each filled by the carried sample within tolerance."""
        carry = self._carry
        if carry is None:
            return []
        start = carry.ts_ms + 1
        if self._last_boundary is not None:
            start = max(start, self._last_boundary + 1)
        filled: list[tuple[T, int | None]] = []
        boundary = next_boundary_ms(start, self.interval_ms, self.tz)
        while boundary < before_ms and boundary - carry.ts_ms <= self.tolerance_ms:
            filled.append(self._decide(carry, boundary))
            boundary = next_boundary_ms(boundary + 1, self.interval_ms, self.tz)
        return filled

    def offer(self, item: T) -> list[tuple[T, int | None]]:
        decided: list[tuple[T, int | None]] = []
        if self._pending is not None:
            # A later sample at or before the boundary is a better candidate for it.
            if item.ts_ms <= self._pending_boundary:
                decided.append((self._pending, None))
            else:
                decided.append(self._decide(self._pending, self._pending_boundary))
            self._pending = None
        decided.extend(self._fill(item.ts_ms))
        self._carry = item
        if self._last_boundary is not None and item.ts_ms <= self._last_boundary:
            decided.append((item, None))  # its boundary is decided already
            return decided
        boundary = next_boundary_ms(item.ts_ms, self.interval_ms, self.tz)
        if boundary == item.ts_ms:
            decided.append(self._decide(item, boundary))
        elif boundary - item.ts_ms <= self.tolerance_ms:
            self._pending, self._pending_boundary = item, boundary
        else:
            decided.append((item, None))
        return decided

    def deadline_ms(self) -> int | None:
        """When the pending sample is sent if nothing better arrives (None: none pending)."""
        return None if self._pending is None else self._pending_boundary + self.wait_ms

    def expire(self, now_ms: int) -> list[tuple[T, int | None]]:
        deadline = self.deadline_ms()
        if self._pending is None or deadline is None or now_ms < deadline:
            return []
        item, self._pending = self._pending, None
        return [self._decide(item, self._pending_boundary)]
