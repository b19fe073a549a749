"""Counter integrity: a cumulative register that goes down or leaps is flagged, not trusted.

Lifetime registers (core.channels.COUNTER_CHANNELS) only grow. When one does not, uplinks
that derive consumption from differences would send negative or absurd energy, so each new
sample of a meter is compared with that meter's previous one (the last sample offered to the
store; at start the newest stored sample):

- `counter_reset`: a counter is lower than before (meter replaced, register rolled over or
  reset). Any decrease counts: the same register read twice gives the same number.
- `counter_jump`: an energy counter (Wh, varh) rose more than the meter could have measured:
  `max_power_w` (meters[].max_power_w; no jump check without it) × (time since the previous
  value first appeared + JUMP_SLACK_S). Measuring from when the value first appeared, plus the
  slack, covers a coarse register that steps 100 Wh at once after a quiet minute. The check is
  skipped when either sample's time is unknown (`clock_unsynced`). Volumes (m3) have no power
  bound and are only checked for decreases.

A flagged sample is stored (its values are what the meter said) and becomes the new baseline:
the next sample is compared with it, so a meter swap is one event, and a one-read glitch is two
(the leap and the return). Uplinks decide what a flag means for them (EnerKey and PTS: see
gateway.uplinks.enerkey.hourly and gateway.uplinks.pts.rules).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from core.channels import COUNTER_CHANNELS, unit_of
from core.flags import CLOCK_UNSYNCED, COUNTER_JUMP, COUNTER_RESET
from core.health import Health
from core.sample import Sample
from gateway.timefmt import utc_iso8601

#: Seconds of full power added to every jump allowance (register resolution, stamp rounding).
JUMP_SLACK_S: Final = 300.0
_POWER_UNITS: Final = frozenset({"Wh", "varh"})


@dataclass(frozen=True, slots=True)
class CounterProblem:
    flag: str
    channel: str
    before: float
    after: float
    before_ts_ms: int
    after_ts_ms: int
    #: The largest rise allowed (counter_jump only).
    limit: float | None = None

    def describe(self, meter: str) -> str:
        unit = unit_of(self.channel)
        change = (
            f"{self.channel} went from {self.before:g} {unit} at "
            f"{utc_iso8601(self.before_ts_ms)} to {self.after:g} {unit} at "
            f"{utc_iso8601(self.after_ts_ms)}"
        )
        if self.flag == COUNTER_RESET:
            why = "it went down: meter replaced, rolled over or reset?"
        else:
            why = f"a rise above the meter's maximum of {self.limit:g} {unit} in that time"
        return f"meter {meter}: {change}; {why} Sample flagged {self.flag}"


def report_counter_problems(health: Health, sample: Sample, problems: list[CounterProblem]) -> None:
    """Count a flagged sample in its meter's health and raise one alert with the numbers."""
    if not problems:
        return
    meter = health.meter(sample.meter)
    meter.counter_resets += COUNTER_RESET in sample.flags
    meter.counter_jumps += COUNTER_JUMP in sample.flags
    text = problems[0].describe(sample.meter)
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} other counter(s))"
    meter.last_counter_problem = text
    health.alert("counters", text)


@dataclass(slots=True)
class _Track:
    value: float
    ts_ms: int
    #: When this value first appeared (the jump allowance counts from here).
    since_ms: int
    timed: bool


class CounterGuard:
    """One meter's counters. `check` flags a sample and makes it the baseline."""

    def __init__(self, meter: str, max_power_w: float | None = None) -> None:
        self.meter = meter
        self.max_power_w = max_power_w
        self._tracks: dict[str, _Track] = {}

    def seed(self, sample: Sample) -> None:
        """Take the newest stored sample as the baseline (at start)."""
        self._update(sample)

    def check(self, sample: Sample) -> tuple[Sample, list[CounterProblem]]:
        """`sample` with its counter flags added, and what was wrong (for the report)."""
        problems: list[CounterProblem] = []
        timed = CLOCK_UNSYNCED not in sample.flags
        for channel, value in sample.values.items():
            track = self._tracks.get(channel)
            if track is None or channel not in COUNTER_CHANNELS:
                continue
            problem = self._judge(channel, track, float(value), sample.ts_ms, timed)
            if problem is not None:
                problems.append(problem)
        self._update(sample)
        if not problems:
            return sample, problems
        flags = sample.flags | {problem.flag for problem in problems}
        return Sample(sample.meter, sample.ts_ms, sample.values, flags), problems

    def _judge(
        self, channel: str, track: _Track, value: float, ts_ms: int, timed: bool
    ) -> CounterProblem | None:
        before = track.value
        if value < before:
            return CounterProblem(COUNTER_RESET, channel, before, value, track.ts_ms, ts_ms)
        if (
            self.max_power_w is None
            or not (timed and track.timed)
            or unit_of(channel) not in _POWER_UNITS
        ):
            return None
        elapsed_s = max(0.0, (ts_ms - track.since_ms) / 1000)
        limit = self.max_power_w * (elapsed_s + JUMP_SLACK_S) / 3600
        if value - before > limit:
            return CounterProblem(
                COUNTER_JUMP, channel, before, value, track.ts_ms, ts_ms, round(limit, 3)
            )
        return None

    def _update(self, sample: Sample) -> None:
        timed = CLOCK_UNSYNCED not in sample.flags
        for channel, raw in sample.values.items():
            if channel not in COUNTER_CHANNELS:
                continue
            value = float(raw)
            track = self._tracks.get(channel)
            if track is not None and value == track.value and track.timed == timed:
                track.ts_ms = sample.ts_ms
            else:
                self._tracks[channel] = _Track(value, sample.ts_ms, sample.ts_ms, timed)
