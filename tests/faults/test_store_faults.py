"""The store under a hostile world (issue 16, "Storage"), against the real daemon process and
real SQLite files on real filesystems (a small tmpfs of our own, tests.fixtures.tmpfs, to fill
up or remount read-only; skipped where the box cannot mount):

- a healthy store out of reach at start (read-only filesystem, a file SQLite cannot open) is
  never moved aside: the daemon exits EXIT_STORE (3) with the reason on stderr;
- a real full disk refuses samples loudly (`store_full`), keeps uplinks draining, resumes;
- a row whose payload no longer decodes is quarantined with an alert; the stream goes on;
- a WAL/SHM deleted while running is noticed and checkpointed before anything is lost;
- readings held while the clock is untrusted are stored flagged `clock_unsynced` at SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from core.sample import Sample
from drivers.simulator import serve_modbus_tcp
from gateway.daemon import DB_FILE
from gateway.store.database import Store
from gateway.store.recovery import EXIT_STORE
from tests.fakes.wattics import FakeWattics
from tests.faults.conftest import DaemonProcess, packet_ms, sdm630_meters
from tests.fixtures.modbus import SDM630_VALUES
from tests.fixtures.mosquitto import MosquittoBroker
from tests.fixtures.tmpfs import Tmpfs
from tests.helpers.eventually import eventually

PASSWORD = "store-faults-password"
T0 = 1_767_225_600_000


def _site(
    path: Path,
    data_dir: Path,
    *,
    modbus_port: int = 1,
    wattics_url: str = "http://127.0.0.1:1/",
    extra: str = "",
    gateway: str = "clock_check: none",
    interval: str = "100ms",
) -> Path:
    path.write_text(
        f"""\
gateway: {{id: faults, timezone: UTC, data_dir: "{data_dir}", {gateway}}}
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: {modbus_port}, timeout_secs: 0.5}}
meters:
  - {{id: m1, bus: plant, unit: 1, model: sdm630, interval_secs: {interval}}}
uplinks:
  wattics:
    url: "{wattics_url}"
    username: disk
    password: ${{WATTICS_PASSWORD}}
    retry_initial_secs: 0.05
    retry_max_secs: 0.2
    commit_every_secs: 0.1
    resync_on_start: false
    meters: {{m1: {{id: s-m1}}}}
http: {{listen: "127.0.0.1:0"}}  # the alerts asserted are the store's, not a "port in use"
{extra}"""
    )
    return path


def _seed(db: Path, rows: int) -> bytes:
    with Store(db) as store:
        store.append([Sample("m1", T0 + i * 1000, SDM630_VALUES) for i in range(rows)])
    return db.read_bytes()


def _rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        (count,) = connection.execute("SELECT COUNT(*) FROM samples").fetchone()
    connection.close()
    return int(count)


def _mqtt(broker: MosquittoBroker) -> str:
    return (
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, topic_prefix: mg, "
        "publish_interval_secs: 0.2}\n"
    )


def _ever_stored(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        row = connection.execute("SELECT seq FROM sqlite_sequence WHERE name='samples'").fetchone()
    connection.close()
    return int(row[0]) if row else 0


def _undelivered(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        (count,) = connection.execute(
            "SELECT COUNT(*) FROM samples s JOIN cursors c ON c.meter = s.meter "
            "WHERE c.uplink = 'wattics' AND s.id > c.position"
        ).fetchone()
    connection.close()
    return int(count)


@asynccontextmanager
async def _state_watch(
    broker: MosquittoBroker, alerts: list[dict[str, object]] | None = None
) -> AsyncIterator[list[dict[str, object]]]:
    """Every `mg/faults/state` the daemon publishes, newest last, while the block runs; and,
    given `alerts`, every message on `mg/faults/alerts` into it (`state` shows only the last
    alert, and another may follow within one publish interval)."""
    seen: list[dict[str, object]] = []

    async def watch() -> None:
        async with aiomqtt.Client(broker.host, broker.port, identifier="store-probe") as client:
            await client.subscribe("mg/faults/state", qos=1)
            if alerts is not None:
                await client.subscribe("mg/faults/alerts", qos=1)
            async for message in client.messages:
                payload = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                if message.topic.matches("mg/faults/state"):
                    seen.append(payload)
                elif alerts is not None:
                    alerts.append(payload)

    task = asyncio.get_running_loop().create_task(watch(), name="state-watch")
    try:
        yield seen
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _alerted(alerts: list[dict[str, object]], words: str) -> bool:
    """Whether an alert published on MQTT says `words`."""
    return any(words in str(alert.get("message")) for alert in alerts)


async def _started(
    factory: Callable[[Path, dict[str, str]], DaemonProcess],
    tmp_path: Path,
    data_dir: Path,
    **site: Any,
) -> DaemonProcess:
    """The daemon on `_site(...)`, running."""
    config = _site(tmp_path / "site.yaml", data_dir, **site)
    daemon = factory(config, {"WATTICS_PASSWORD": PASSWORD})
    await daemon.start()
    await daemon.wait_running()
    return daemon


async def _exits_with_store_error(daemon: DaemonProcess) -> str:
    await daemon.start()
    assert daemon.process is not None
    async with asyncio.timeout(20):  # it stops by itself
        status = await daemon.process.wait()
    assert status == EXIT_STORE, daemon.log_text()[-3000:]
    return daemon.log_text()


# -- 1. a healthy store out of reach is not "corrupt" --------------------------------------------


@pytest.mark.timeout(40)
async def test_read_only_filesystem_at_start_exits_3_loudly_and_keeps_the_store(
    tmp_path: Path,
    tmpfs: Callable[[int], Tmpfs],
    daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess],
) -> None:
    disk = tmpfs(4 * 1024 * 1024)
    db = disk.path / DB_FILE
    before = _seed(db, 200)
    disk.remount(read_only=True)
    daemon = daemon_factory(
        _site(tmp_path / "site.yaml", disk.path), {"WATTICS_PASSWORD": PASSWORD}
    )
    text = await _exits_with_store_error(daemon)
    assert "error: store" in text and "NOT corrupt" in text  # what `systemctl status` shows
    assert "Traceback" not in text
    assert db.read_bytes() == before  # untouched: no fresh store, nothing moved aside
    assert sorted(p.name for p in disk.path.iterdir()) == [DB_FILE, f"{DB_FILE}-reserve"]


@pytest.mark.timeout(40)
async def test_a_store_sqlite_cannot_open_exits_3_and_is_not_moved_aside(
    tmp_path: Path, daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess]
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = data_dir / DB_FILE
    before = _seed(db, 200)
    wal = Path(f"{db}-wal")
    wal.mkdir()  # noqa: ASYNC240 (set-up) what SQLite needs beside the file is unusable
    daemon = daemon_factory(_site(tmp_path / "site.yaml", data_dir), {"WATTICS_PASSWORD": PASSWORD})
    text = await _exits_with_store_error(daemon)
    assert "unable to open database file" in text and "NOT corrupt" in text
    assert db.read_bytes() == before
    assert not any(".corrupt-" in p.name for p in data_dir.iterdir())
    wal.rmdir()  # noqa: ASYNC240 the operator fixes it: every sample is still there
    assert _rows(db) == 200


# -- 2. a real full disk ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_really_full_disk_refuses_loudly_keeps_running_and_resumes(
    tmp_path: Path,
    tmpfs: Callable[[int], Tmpfs],
    daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess],
    mosquitto: MosquittoBroker,
) -> None:
    disk = tmpfs(8 * 1024 * 1024)
    db = disk.path / DB_FILE
    async with (
        FakeWattics("disk", PASSWORD, {"s-m1"}) as wattics,
        serve_modbus_tcp(sdm630_meters(1)) as modbus,
        _state_watch(mosquitto) as states,
    ):
        wattics.fail_for(3600)  # the cloud is down: the backlog grows
        daemon = await _started(
            daemon_factory,
            tmp_path,
            disk.path,
            modbus_port=modbus.port,
            wattics_url=wattics.url,
            extra=_mqtt(mosquitto),
            gateway="clock_check: none, retention_hours: 0",  # delivered may go at once
        )
        await eventually(lambda: _ever_stored(db) >= 20, timeout=10, what="samples stored")
        filler = disk.fill()  # the SD card is full (another program's log, say)
        await eventually(
            lambda: any(s.get("store_full") for s in states),
            timeout=15,
            interval=0.05,
            what="store_full on MQTT",
        )
        full = next(s for s in states if s.get("store_full"))
        assert full["last_alert"]["source"] == "store"  # type: ignore[index]
        await asyncio.sleep(1.0)  # it stays up, refusing (no exit, no restart loop)
        assert daemon.running, daemon.log_text()[-3000:]
        assert "disk is full" in daemon.log_text()

        wattics.fail_for(0)  # the cloud is back while the disk is still full: uplinks drain
        await eventually(
            lambda: len(wattics.delivered("s-m1")) >= 20, timeout=15, what="the backlog delivered"
        )
        await asyncio.sleep(0.5)
        assert daemon.running, daemon.log_text()[-3000:]
        filler.unlink()  # space comes back
        states.clear()
        await eventually(
            lambda: states and not states[-1].get("store_full"),
            timeout=15,
            interval=0.05,
            what="store_full cleared",
        )
        resumed = _ever_stored(db)
        await eventually(
            lambda: _ever_stored(db) > resumed + 5, timeout=10, what="samples stored again"
        )
        assert daemon.running
        assert await daemon.stop() == 0
        delivered = len(wattics.delivered("s-m1"))
    assert daemon.starts == 1
    # Nothing lost: every sample the store took is at Wattics or still queued.
    assert delivered + _undelivered(db) == _ever_stored(db)
    assert [packet_ms(p) for p in wattics.delivered("s-m1")] == sorted(
        packet_ms(p) for p in wattics.delivered("s-m1")
    )


# -- 5. readings held for an untrusted clock, at a clean stop ---------------------------------


def _flagged(db: Path) -> list[tuple[int, str | None]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT ts_ms, flags FROM samples ORDER BY id").fetchall()
    connection.close()
    return [(int(ts), flags) for ts, flags in rows]


@pytest.mark.slow
@pytest.mark.timeout(40)
async def test_readings_held_for_an_untrusted_clock_are_stored_flagged_at_sigterm(
    tmp_path: Path,
    daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess],
    mosquitto: MosquittoBroker,
) -> None:
    data_dir = tmp_path / "data"
    never_synced = tmp_path / "no-ntp-yet"  # the NTP client's flag file is not there
    async with (
        serve_modbus_tcp(sdm630_meters(1)) as modbus,
        _state_watch(mosquitto) as states,
    ):
        daemon = await _started(
            daemon_factory,
            tmp_path,
            data_dir,
            modbus_port=modbus.port,
            extra=_mqtt(mosquitto),
            gateway=f'clock_check: file, clock_sync_file: "{never_synced}"',
            interval="200ms",
        )

        def held() -> int:
            clock = states[-1]["clock"] if states else {}
            return int(clock.get("held", 0))  # type: ignore[union-attr]

        await eventually(lambda: held() >= 5, timeout=15, interval=0.05, what="readings held")
        at_least = held()
        assert await daemon.stop() == 0
    rows = _flagged(data_dir / DB_FILE)
    assert len(rows) >= at_least  # none vanished with the process
    assert all(flags == "clock_unsynced" for _, flags in rows)
    assert [ts for ts, _ in rows] == sorted(ts for ts, _ in rows)
    assert f"{len(rows)} held reading(s) stored flagged clock_unsynced" in daemon.log_text()


# -- 3. one damaged row ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(40)
async def test_a_row_that_no_longer_decodes_is_quarantined_and_its_stream_goes_on(
    tmp_path: Path,
    daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess],
    mosquitto: MosquittoBroker,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = data_dir / DB_FILE
    start_ms = int(time.time() * 1000) - 120_000
    with Store(db) as store:  # a backlog from before, then one row's bits rot
        store.append([Sample("m1", start_ms + i * 1000, SDM630_VALUES) for i in range(60)])
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE samples SET vals = '{\"power_act\x01' WHERE id = 20")
        assert connection.execute("PRAGMA quick_check").fetchone() == ("ok",)
    connection.close()
    alerts: list[dict[str, object]] = []
    async with (
        FakeWattics("disk", PASSWORD, {"s-m1"}) as wattics,
        serve_modbus_tcp(sdm630_meters(1)) as modbus,
        _state_watch(mosquitto, alerts),
    ):
        daemon = await _started(
            daemon_factory,
            tmp_path,
            data_dir,
            modbus_port=modbus.port,
            wattics_url=wattics.url,
            extra=_mqtt(mosquitto),
        )
        # The backlog past the damaged row and live samples arrive: the stream goes on.
        await wattics.wait_accepted(59 + 5, timeout=20)
        await eventually(
            lambda: _alerted(alerts, "quarantine"),
            timeout=10,
            what="the quarantine alert on MQTT",
        )
        assert daemon.running
        assert await daemon.stop() == 0
        delivered = [packet_ms(p) for p in wattics.delivered("s-m1")]
    assert daemon.starts == 1
    assert "stream stopped by an error" not in daemon.log_text()  # no crash loop
    assert start_ms + 19 * 1000 not in delivered  # the damaged one is not sent as data
    assert {start_ms + i * 1000 for i in range(60) if i != 19} <= set(delivered)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        assert connection.execute("SELECT sample_id FROM quarantine").fetchall() == [(20,)]
    connection.close()


# -- 4. WAL and SHM deleted while running -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(40)
async def test_wal_deleted_while_running_is_saved_before_a_kill_9(
    tmp_path: Path,
    daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess],
    mosquitto: MosquittoBroker,
) -> None:
    data_dir = tmp_path / "data"
    db = data_dir / DB_FILE
    alerts: list[dict[str, object]] = []
    async with (
        FakeWattics("disk", PASSWORD, {"s-m1"}) as wattics,
        serve_modbus_tcp(sdm630_meters(1)) as modbus,
        _state_watch(mosquitto, alerts),
    ):
        wattics.fail_for(3600)  # nothing delivered: everything is in the store (in its WAL)
        daemon = await _started(
            daemon_factory,
            tmp_path,
            data_dir,
            modbus_port=modbus.port,
            wattics_url=wattics.url,
            extra=_mqtt(mosquitto),
        )
        await eventually(lambda: _ever_stored(db) >= 10, timeout=10, what="samples stored")
        before = _ever_stored(db)
        Path(f"{db}-wal").unlink()  # noqa: ASYNC240 an operator clears "junk" files
        Path(f"{db}-shm").unlink()  # noqa: ASYNC240
        await eventually(
            lambda: _alerted(alerts, "deleted while it ran"),
            timeout=10,
            what="the alert on MQTT",
        )
        assert daemon.running
        assert await daemon.kill9() == -9  # then the power goes
    assert _rows(db) >= before  # the database has its tables and every sample stored before
    assert "deleted while it ran" in daemon.log_text()
