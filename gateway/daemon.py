"""`meter-gateway run`: the poller, the uplinks and the monitor under one TaskGroup.

Shutdown order matters for "nothing lost": on SIGTERM we stop polling first (no new samples),
then let uplinks finish the request in flight and commit their cursors, then say `offline`
on MQTT, then close the store. A crash of any task ends the TaskGroup, and the process exits
non-zero so systemd restarts it; the store makes the restart lose nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from core.health import Health
from drivers.factory import open_readers
from gateway import __version__
from gateway.config.redaction import learn_config
from gateway.config.schema import Config
from gateway.memory import release_free_memory
from gateway.ops import sdnotify, status_plane
from gateway.ops.status_facts import LiveState
from gateway.poller import poller_for
from gateway.sources.base import SourceContext
from gateway.sources.registry import build_sources
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from gateway.store.recovery import open_store_checked
from gateway.uplinks.registry import UplinkContext, build_uplinks

log = logging.getLogger(__name__)

DB_FILE = "gateway.sqlite3"
#: How often delivered, expired samples are deleted.
PRUNE_EVERY_S = 300.0
#: How often the store's files are checked (deleted -wal/-shm while running).
STORE_CHECK_EVERY_S = 2.0
#: Budget for the whole shutdown (systemd's TimeoutStopSec is 20 s).
SHUTDOWN_BUDGET_S = 8.0


def open_store(config: Config, health: Health | None = None) -> Store:
    """The site's store; a corrupt file is moved aside with an alert instead of crash-looping."""
    data_dir = Path(config.gateway.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    budget = int(config.gateway.disk_budget_mb * 1024 * 1024)
    store, moved = open_store_checked(data_dir / DB_FILE, budget_bytes=budget)
    if moved is not None and health is not None:
        health.alert("store", f"database was corrupt: moved aside to {moved}, started afresh")
    return store


class Daemon:
    def __init__(self, config: Config, *, health: Health | None = None) -> None:
        self.config = config
        self.health = health or Health()
        self._stop = asyncio.Event()
        #: What the status page and `status` show; set once the daemon runs.
        self.live: LiveState | None = None

    def stop(self) -> None:
        self._stop.set()

    async def run(self, on_ready: Callable[[], Awaitable[None]] | None = None) -> None:
        config = self.config
        learn_config(config)  # log, MQTT, store and status mask its secrets (core.redact)
        astore = AsyncStore(open_store(config, self.health))
        loop = asyncio.get_running_loop()  # a quarantined row is alerted from the store thread
        astore.store.on_quarantine = lambda message: loop.call_soon_threadsafe(
            self.health.alert, "store", message
        )
        try:
            async with open_readers(config, health=self.health) as readers:
                poller = poller_for(config, readers, astore, self.health)
                uplinks = build_uplinks(UplinkContext(config, astore, self.health))
                async with asyncio.TaskGroup() as group:
                    polling = group.create_task(poller.run(), name="poller")
                    sending = [
                        group.create_task(uplink.run(), name=f"uplink-{uplink.name}")
                        for uplink in uplinks
                    ]
                    sources = build_sources(SourceContext(config, astore, self.health))
                    sourcing = [
                        group.create_task(source.run(), name=f"source-{source.name}")
                        for source in sources
                    ]
                    helpers = [
                        group.create_task(self._prune_forever(astore), name="retention"),
                        group.create_task(self._watchdog_forever(), name="watchdog"),
                        group.create_task(self._check_store_forever(astore), name="store-files"),
                    ]
                    monitoring: list[asyncio.Task[None]] = []
                    monitor = None
                    if config.mqtt is not None:
                        from gateway.ops.plane import operations_plane

                        monitor, plane = operations_plane(
                            config,
                            health=self.health,
                            version=__version__,
                            astore=astore,
                            poller=poller,
                            uplinks=uplinks,
                        )
                        monitoring = [group.create_task(job, name=name) for name, job in plane]
                    self.live = status_plane.live_state(
                        config, self.health, astore, uplinks, version=__version__, monitor=monitor
                    )
                    monitoring += [
                        group.create_task(job, name=name)
                        for name, job in status_plane.status_tasks(
                            self.live, astore, clock_trusted=poller.clock.trusted
                        )
                    ]
                    release_free_memory()  # start-up's garbage, before the steady state
                    sdnotify.notify("READY=1")
                    sdnotify.notify(
                        f"STATUS=polling {len(config.meters)} meter(s), {len(uplinks)} uplink(s)"
                    )
                    log.info(
                        "meter-gateway %s running: %d meter(s), uplinks: %s",
                        __version__,
                        len(config.meters),
                        ", ".join(u.name for u in uplinks) or "none",
                    )
                    if on_ready is not None:
                        await on_ready()
                    await self._stop.wait()
                    sdnotify.notify("STOPPING=1")
                    log.info("stopping: polling ends, uplinks finish what is in flight")
                    await _cancel_and_wait([polling, *sourcing], SHUTDOWN_BUDGET_S / 4)
                    await poller.store_held_at_stop()
                    # Uplinks finish the request in flight: cancelled once, never again.
                    await _cancel_and_wait(sending, SHUTDOWN_BUDGET_S / 2, recancel=False)
                    await _cancel_and_wait([*helpers, *monitoring], SHUTDOWN_BUDGET_S / 4)
                    await status_plane.save_stopped(self.live, astore)
        finally:
            await astore.aclose()
        log.info("stopped")

    async def _prune_forever(self, astore: AsyncStore) -> None:
        retention_ms = int(self.config.gateway.retention_hours * 3600 * 1000)
        while True:
            await asyncio.sleep(PRUNE_EVERY_S)
            deleted = await astore.prune(int(time.time() * 1000), retention_ms)
            if deleted:
                log.debug("retention deleted %d delivered sample(s)", deleted)
            release_free_memory()  # a catch-up's batches are garbage by now

    async def _check_store_forever(self, astore: AsyncStore) -> None:
        """The store's files still there (gateway.store.files): a deleted -wal is saved by a
        checkpoint and alerted; one that cannot be saved stops the daemon (exit 3)."""
        while True:
            await asyncio.sleep(STORE_CHECK_EVERY_S)
            problem = await astore.check_files()
            if problem is not None:
                self.health.alert("store", problem)

    async def _watchdog_forever(self) -> None:
        """Tell systemd we are alive only while the event loop really turns."""
        interval = sdnotify.watchdog_interval()
        if interval is None:
            return
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)


#: A task still running after half its budget is cancelled again this often (_cancel_and_wait).
RECANCEL_EVERY_S = 0.1


async def _cancel_and_wait(
    tasks: list[asyncio.Task[None]], budget: float, *, recancel: bool = True
) -> None:
    """Cancel `tasks` and wait up to `budget` for them. With `recancel`, what still runs after
    half the budget is cancelled again every RECANCEL_EVERY_S: a library may have swallowed
    the cancel (3.11's `wait_for`, core.cancel), and the next one lands at the task's next
    await. The first half leaves a task that handles its cancel (stores what it holds) alone.
    """
    loop = asyncio.get_running_loop()
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    deadline = loop.time() + budget
    _, pending = await asyncio.wait(tasks, timeout=budget / 2 if recancel else budget)
    while recancel and pending and (left := deadline - loop.time()) > 0:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_EVERY_S, left))
    for task in pending:
        log.warning("task %s did not stop within %.1fs", task.get_name(), budget)


async def run_until_signalled(config: Config) -> int:
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)
    try:
        await daemon.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return 0
