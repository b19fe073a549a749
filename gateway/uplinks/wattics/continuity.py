"""Lifetime counters an uplink forwards stay continuous across meter swaps and resets.

Wattics reads `pC_n` (and value datapoints of a lifetime register) as "energy since the
beginning" and derives consumption from differences. When a meter is replaced or its register
resets, the raw reading drops, which the platform would show as a large negative consumption;
a one-read glitch (`counter_jump`) would show as an absurd spike and its return. The poller
flags such samples (gateway.counters); here each flagged change is absorbed, so the forwarded
series continues from its last value:

    forwarded = last forwarded + (raw - last raw)      (an unflagged sample)
    forwarded = last forwarded                         (a re-based one, below)

- `counter_reset`: channels whose forwarded value would go down are re-based to continue
  from their last forwarded value (the consumption between the last read of the old register
  and the first of the new one is unknown and counted as zero);
- `counter_jump`: every counter channel of that sample is re-based the same way (the leap is
  not forwarded; the glitch's return, flagged `counter_reset`, is absorbed too).

Differences, not a stored offset, carry the series on, so float rounding can never make an
unflagged step go down. The forwarded values then differ from the meter's display by an
offset (docs/clock-and-counters.md). The state (last forwarded and last raw value per channel)
is committed with the uplink's cursor, and applying a sample twice gives the same result, so
a replay after a crash is exact.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from core.channels import COUNTER_CHANNELS
from core.flags import COUNTER_JUMP, COUNTER_RESET
from core.sample import Sample


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class CounterContinuity:
    #: Per channel: the last value forwarded, and the raw reading it came from.
    last: dict[str, float] = field(default_factory=dict)
    raw: dict[str, float] = field(default_factory=dict)

    def apply(self, sample: Sample) -> Sample:
        """The sample with its counter channels continued (the same object when unchanged)."""
        counters = COUNTER_CHANNELS & sample.values.keys()
        if not counters:
            return sample
        jump = COUNTER_JUMP in sample.flags
        reset = COUNTER_RESET in sample.flags
        values = dict(sample.values)
        for channel in counters:
            raw = values[channel]
            if not _finite(raw):
                continue
            previous, previous_raw = self.last.get(channel), self.raw.get(channel)
            if previous is None or previous_raw is None:
                continued = raw
            elif jump or (reset and raw < previous_raw):
                continued = previous  # a new series starts here: nothing of the leap is sent
            else:
                continued = previous + (raw - previous_raw)
            values[channel] = continued
            self.last[channel] = continued
            self.raw[channel] = raw
        if all(values[c] == sample.values[c] for c in counters):
            return sample
        return Sample(sample.meter, sample.ts_ms, values, sample.flags)

    def dump(self) -> str:
        return json.dumps({"last": self.last, "raw": self.raw}, sort_keys=True)

    @classmethod
    def load(cls, text: str | None) -> CounterContinuity:
        """From `dump()`'s text; a missing or unreadable state starts afresh."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            last = {str(k): float(v) for k, v in data["last"].items()}
            raw = {str(k): float(v) for k, v in data["raw"].items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls()
        return cls(last, raw)
