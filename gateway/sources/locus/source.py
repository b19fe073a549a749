"""Locus Energy (SolarNOC) as a source: PV components read through the Locus v3 API.

One task per configured meter (gateway.sources.locus.meter), all sharing one client whose
account gate keeps a single request in flight (gateway.sources.locus.client) and one token
(gateway.sources.locus.auth). Locus stamps an interval with its start; the store gets it
stamped with its end (gateway.sources.locus.plan explains why).
"""

from __future__ import annotations

import asyncio

from gateway.sources.base import Source, SourceConfig, SourceContext
from gateway.sources.locus.client import LocusClient
from gateway.sources.locus.config import LocusConfig
from gateway.sources.locus.meter import LocusMeterWorker


class LocusEnergySource:
    name = "locus"

    def __init__(self, section: LocusConfig, context: SourceContext) -> None:
        self.section = section
        self.context = context
        self.workers: list[LocusMeterWorker] = []

    async def run(self) -> None:
        context = self.context
        async with LocusClient(self.section, context.clock) as client:
            self.workers = [
                LocusMeterWorker(
                    meter_id,
                    meter,
                    self.section,
                    client=client,
                    store=context.store,
                    health=context.health,
                    clock=context.clock,
                )
                for meter_id, meter in self.section.meters.items()
            ]
            async with asyncio.TaskGroup() as group:
                for worker in self.workers:
                    group.create_task(worker.run(), name=f"locus:{worker.meter_id}")


def build_source(section: SourceConfig, context: SourceContext) -> Source:
    """Registered for `sources.locus` (gateway.sources.locus.config)."""
    if not isinstance(section, LocusConfig):
        raise TypeError(f"not a Locus section: {type(section).__name__}")
    return LocusEnergySource(section, context)
