"""Physical plausibility: a value no meter can measure is not stored as good data.

A meter (or a lying converter) may answer well-formed frames carrying finite, absurd floats
(-3×10¹² V, 10³³ Wh). Each value is checked against its channel type's range
(core.channels.PLAUSIBLE_RANGES, narrowed or widened per site by `gateway.plausible_ranges`);
not-a-number and infinities are out of every range.

Invariants:
- An implausible value is removed from the sample, and the sample is flagged `implausible`
  (core.flags): every uplink forwards only the values that remain, and no uplink needs to know
  the flag to stay clean. The other values are kept as read. A sample with no plausible value
  left is not stored at all.
- The check runs before the counter checks (gateway.counters), so an absurd counter never
  becomes a baseline that makes the next real reading look like a reset.
- Counted per meter in health (`implausible_values`, `last_implausible`, with the value) and
  alerted once per meter and channel until that channel reads plausibly again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from core.channels import PLAUSIBLE_RANGES, channel_type
from core.flags import IMPLAUSIBLE
from core.health import Health
from core.sample import Sample


class PlausibilityGuard:
    """Checks every sample of every meter against one table of ranges."""

    def __init__(self, overrides: Mapping[str, tuple[float, float]] | None = None) -> None:
        self.ranges = {**PLAUSIBLE_RANGES, **(overrides or {})}
        #: (meter, channel) alerted and not yet plausible again.
        self._alerted: set[tuple[str, str]] = set()

    def check(self, sample: Sample, health: Health) -> Sample | None:
        """`sample` without its implausible values (flagged), as is, or None if none is left."""
        kept: dict[str, float] = {}
        dropped: list[str] = []
        for channel, value in sample.values.items():
            bounds = self.ranges.get(channel_type(channel))
            if bounds is None or (math.isfinite(value) and bounds[0] <= value <= bounds[1]):
                kept[channel] = value
                self._alerted.discard((sample.meter, channel))
                continue
            unit_range = f"{bounds[0]:g}..{bounds[1]:g}"
            dropped.append(f"{channel}={value:g} (plausible: {unit_range})")
            self._report(sample.meter, channel, dropped[-1], health)
        if not dropped:
            return sample
        meter = health.meter(sample.meter)
        meter.implausible_values += len(dropped)
        meter.last_implausible = "; ".join(dropped)
        if not kept:
            return None
        return Sample(sample.meter, sample.ts_ms, kept, sample.flags | {IMPLAUSIBLE})

    def _report(self, meter: str, channel: str, what: str, health: Health) -> None:
        if (meter, channel) in self._alerted:
            return
        self._alerted.add((meter, channel))
        health.alert(
            f"meter {meter}",
            f"implausible value {what}: not stored; the meter's other values are "
            "(check the register map, the CT ratio or the meter)",
        )
