"""The daemon's operations plane: the MQTT monitor and the tasks that feed it, built from the
config's `mqtt:` section (nothing at all without one).

Invariants:
- Nothing here sits in the data path: samples are followed through the store's log, as uplinks
  follow it, and store figures are measured on a reader thread (gateway.ops.figures).
- `feed_samples` arms its wait for the next append before it reads, so no sample stored in
  between is missed, and publishes each stored sample once, in store order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Coroutine, Sequence
from typing import Any

from core.health import Health
from core.sample import StoredSample
from gateway.config.schema import Config
from gateway.ops.commands import CommandHandler
from gateway.ops.discovery import Inventory, StoreLedger, describe_meters
from gateway.ops.figures import StoreFigures, acknowledged_positions, uplink_streams
from gateway.ops.monitor import Monitor
from gateway.poller import Poller
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from gateway.uplinks.base import Uplink


async def feed_samples(monitor: Monitor, astore: AsyncStore, meters: Collection[str]) -> None:
    """Publish every sample stored from now on to `meters/<id>/values`, until cancelled.

    It follows the store's log (as uplinks do) instead of being called by the poller: the
    poller never knows MQTT exists, and the topic carries exactly what was recorded.
    """
    position = await astore.run(_newest_id, meters)
    while True:
        # Arm the wait BEFORE reading, so an append between the read and the wait is seen.
        waiter = asyncio.get_running_loop().create_task(
            astore.wait_appended(30.0), name="mqtt-values-idle"
        )
        try:
            await asyncio.sleep(0)
            batch: list[StoredSample] = await astore.read_all(position, 500)
            if not batch:
                await waiter
        finally:
            waiter.cancel()
        for stored in batch:
            position = stored.rowid
            if stored.sample.meter in meters:
                monitor.publish_sample(stored.sample)


def _newest_id(store: Store, meters: Collection[str]) -> int:
    """Row id of the newest stored sample of any of `meters` (0 when none): where to start."""
    newest = 0
    for meter in meters:
        ts_ms = store.last_ts(meter)
        if ts_ms is not None:
            rows = store.read_time_range(meter, ts_ms, ts_ms)
            if rows:
                newest = max(newest, rows[-1].rowid)
    return newest


async def measure_forever(
    health: Health,
    astore: AsyncStore,
    uplinks: Sequence[Uplink],
    *,
    every_secs: float,
    clock_trusted: Callable[[], bool] | None = None,
) -> None:
    """Fill Health with what only the store knows (size, backlog per uplink, dead letters) and
    the clock's state, every `every_secs`, until cancelled (gateway.ops.figures: on a reader
    thread of its own, so the data path is not held up)."""
    figures = StoreFigures(
        astore.store.path,
        uplink_streams(uplinks),
        astore.store.budget_bytes,
        acknowledged_positions(uplinks),
    )
    await figures.measure_forever(health, every_secs=every_secs, clock_trusted=clock_trusted)


def operations_plane(
    config: Config,
    *,
    health: Health,
    version: str,
    astore: AsyncStore,
    poller: Poller,
    uplinks: Sequence[Uplink],
) -> tuple[Monitor | None, list[tuple[str, Coroutine[Any, Any, None]]]]:
    """The daemon's MQTT monitor and tasks, (name, coroutine), for a config with an `mqtt:`
    section (the store figures it publishes are measured by the daemon's `StoreFigures`)."""
    mqtt = config.mqtt
    if mqtt is None:
        return None, []
    commands = CommandHandler(
        mqtt.commands,
        health=health,
        meters=config.meters,
        read_once=poller.read_once,
        displaces=poller.displaces,
        store=astore,
        uplinks={uplink.name: uplink for uplink in uplinks},
        clock_trusted=poller.clock.trusted,
    )
    inventory = Inventory(
        config.gateway.id,
        meters=describe_meters(config.meters, config.buses),
        uplinks=tuple(uplink.name for uplink in uplinks),
    )
    monitor = Monitor(
        mqtt,
        gateway_id=config.gateway.id,
        health=health,
        version=version,
        inventory=inventory,
        commands=commands,
        ledger=StoreLedger(astore),
    )
    tasks: list[tuple[str, Coroutine[Any, Any, None]]] = [("monitor", monitor.run())]
    if mqtt.publish_values:
        meters = frozenset(meter.id for meter in config.meters)
        tasks.append(("mqtt-values", feed_samples(monitor, astore, meters)))
    return monitor, tasks
