"""The contract every head-end source keeps, and the one way it stores samples."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from core.config_base import KeyPath, Strict
from core.health import Health
from core.sample import Sample
from gateway.counters import CounterGuard, report_counter_problems
from gateway.plugins import PluginContext
from gateway.store.async_store import AsyncStore
from gateway.store.database import StoreFull


class SourceConfig(Strict):
    """A `sources:` config section. It names the meter ids it produces, so uplinks may refer
    to them like to any polled meter and the loader can tell a duplicate id."""

    def meter_ids(self) -> Iterator[tuple[KeyPath, str]]:
        """(key path inside this section, meter id) for every meter the source feeds."""
        return iter(())


class Source(Protocol):
    #: The config key under `sources:` ("mts", "locus").
    name: str

    async def run(self) -> None:
        """Run until cancelled. Remote faults are retried, reported to health and logged,
        never raised: a head-end being away must not stop the daemon."""
        ...


#: What every source may use besides its own config section.
SourceContext = PluginContext


#: Later than any sample's time (for "the newest stored sample" queries).
_FAR_FUTURE_MS = 2**62


class SourceCounters:
    """Counter integrity for a source's meters, as the poller checks polled ones: a lifetime
    register that goes down (a meter swapped behind the head-end) or leaps is flagged
    (gateway.counters), counted and alerted. Each meter's baseline is its newest stored
    sample, read once."""

    def __init__(self, store: AsyncStore, health: Health) -> None:
        self._store = store
        self._health = health
        self._guards: dict[str, CounterGuard] = {}

    async def check(self, sample: Sample) -> Sample:
        guard = self._guards.get(sample.meter)
        if guard is None:
            guard = self._guards[sample.meter] = CounterGuard(sample.meter)
            last = await self._store.find_sample(sample.meter, 0, _FAR_FUTURE_MS, last=True)
            if last is not None:
                guard.seed(last.sample)
        checked, problems = guard.check(sample)
        report_counter_problems(self._health, checked, problems)
        return checked


async def store_new_samples(
    store: AsyncStore, samples: Sequence[Sample], counters: SourceCounters | None = None
) -> list[Sample]:
    """Store, per meter in time order, the samples newer than what the store already holds
    for that meter; return those stored.

    Overlaps (consecutive MTS surveys, a Locus backfill window reaching back) are thus stored
    once, and an older sample never reaches the store's per-meter order check. With
    `counters`, each new sample is counter-checked (and flagged) before it is stored. Raises
    StoreFull (storing nothing) when the disk budget is reached: the caller keeps its place
    and tries again later (the check then sees those samples again: harmless, they are the
    baseline they would have become).
    """
    ordered = sorted(samples, key=lambda s: (s.meter, s.ts_ms))
    fresh: list[Sample] = []
    newest: dict[str, int | None] = {}
    for sample in ordered:
        if sample.meter not in newest:
            newest[sample.meter] = store.store.last_ts(sample.meter)
        last = newest[sample.meter]
        if last is None or sample.ts_ms > last:
            fresh.append(sample)
            newest[sample.meter] = sample.ts_ms
    if not fresh:
        return []
    if counters is not None:
        fresh = [await counters.check(sample) for sample in fresh]
    ids = await store.append(fresh)
    return [sample for sample, row in zip(fresh, ids, strict=True) if row is not None]


__all__ = [
    "Source",
    "SourceConfig",
    "SourceContext",
    "SourceCounters",
    "StoreFull",
    "store_new_samples",
]
