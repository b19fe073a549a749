"""What the daemon runs so people can see it: the store figures, the chart history, the status
snapshot `meter-gateway status` reads, and (with `http.enabled`) the status page server.

Each is a plain task beside the data path (gateway.ops.figures, history, snapshot,
http_server); none is ever awaited by the poller or an uplink.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from core.health import Health
from gateway.config.schema import Config
from gateway.ops import snapshot
from gateway.ops.figures import (
    MEASURE_EVERY_S,
    StoreFigures,
    acknowledged_positions,
    uplink_streams,
)
from gateway.ops.history import History, record_forever
from gateway.ops.status_facts import LiveState, live_facts
from gateway.store.async_store import AsyncStore
from gateway.uplinks.base import Uplink

if TYPE_CHECKING:
    from gateway.ops.monitor import Monitor

log = logging.getLogger(__name__)


def live_state(
    config: Config,
    health: Health,
    astore: AsyncStore,
    uplinks: Sequence[Uplink],
    *,
    version: str,
    monitor: Monitor | None = None,
) -> LiveState:
    figures = StoreFigures(
        astore.store.path,
        uplink_streams(uplinks),
        astore.store.budget_bytes,
        acknowledged_positions(uplinks),
    )
    return LiveState(
        config=config,
        health=health,
        version=version,
        figures=figures,
        history=History(),
        astore=astore,
        mqtt_connected=None if monitor is None else (lambda: monitor.connected),
    )


def status_tasks(
    live: LiveState, astore: AsyncStore, *, clock_trusted: Callable[[], bool] | None = None
) -> list[tuple[str, Coroutine[Any, Any, None]]]:
    config = live.config
    every = MEASURE_EVERY_S
    if config.mqtt is not None:
        every = min(every, config.mqtt.publish_interval_secs)
    tasks: list[tuple[str, Coroutine[Any, Any, None]]] = [
        (
            "store-figures",
            live.figures.measure_forever(
                live.health, every_secs=every, clock_trusted=clock_trusted
            ),
        ),
        ("chart-history", record_forever(live.history, live.health)),
        ("status-snapshot", snapshot.save_forever(astore, lambda: live_facts(live))),
    ]
    if config.http.enabled:
        from gateway.ops.http_server import serve_forever

        tasks.append(("status-page", serve_forever(config.http, live, alert=live.health.alert)))
    return tasks


async def save_stopped(live: LiveState | None, astore: AsyncStore) -> None:
    """The last snapshot, marked stopped (a clean shutdown, not a crash)."""
    if live is None:
        return
    try:
        document = live_facts(live)
        document["gateway"]["stopped_ms"] = int(time.time() * 1000)
    except Exception:  # a bug here must not spoil a clean shutdown
        log.exception("status snapshot at shutdown failed")
        return
    await snapshot.save(astore, document)
