"""The SD card: a disk budget that fills up during a cloud outage, and a database file that is
corrupt when the gateway starts.

Budget: while Wattics is down the backlog grows until the store reaches its budget. From then
on new samples are refused LOUDLY (an error in the log, an alert, `store_full` in health, a
`store_full` error count on the meter) and nothing undelivered is deleted. When Wattics comes
back the backlog is delivered, retention prunes it, and the store accepts samples again by
itself. Every sample the store ever took (SQLite's AUTOINCREMENT counter says how many) ends
up at Wattics or is still waiting in the store: none is lost.

Corrupt file: the daemon (a real process) moves it aside, says so on MQTT as an alert, and
runs on with a fresh store instead of crash-looping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from core.health import Health
from core.sample import Sample
from drivers.simulator import serve_modbus_tcp
from gateway import daemon as daemon_module
from gateway.config.schema import Config
from gateway.daemon import DB_FILE, Daemon
from gateway.store.database import Store
from tests.fakes.wattics import FakeWattics
from tests.faults.conftest import (
    DaemonProcess,
    packet_ms,
    sdm630_meters,
    stored_stamps,
)
from tests.fixtures.modbus import SDM630_VALUES
from tests.fixtures.mosquitto import MosquittoBroker
from tests.helpers.eventually import eventually

PASSWORD = "disk-wattics-password"
STREAMS = {"m1": "s-m1", "m2": "s-m2"}
#: Room left in the budget above the seeded backlog: a few dozen live samples.
HEADROOM_BYTES = 24 * 1024


def _config(data_dir: Path, modbus_port: int, url: str, budget_bytes: int) -> Config:
    return Config.model_validate(
        {
            "gateway": {
                "id": "faults",
                "timezone": "UTC",
                "data_dir": str(data_dir),
                "disk_budget_mb": budget_bytes / (1024 * 1024),
                "retention_hours": 0,  # delivered samples may go at once: room comes back fast
                "clock_check": "none",  # this box's clock may not be NTP-synced
            },
            # a free port: the alert asserted below must not be the status page's "port in use"
            "http": {"listen": "127.0.0.1:0"},
            "buses": {
                "plant": {
                    "type": "modbus-tcp",
                    "host": "127.0.0.1",
                    "port": modbus_port,
                    "timeout_secs": 0.5,
                }
            },
            "meters": [
                {"id": m, "bus": "plant", "unit": unit, "model": "sdm630", "interval": "100ms"}
                for unit, m in enumerate(STREAMS, start=1)
            ],
            "uplinks": {
                "wattics": {
                    "url": url,
                    "username": "disk",
                    "password": PASSWORD,
                    "retry_initial_secs": 0.05,
                    "retry_max_secs": 0.2,
                    "commit_every_secs": 0.1,
                    "resync_on_start": False,
                    "meters": {m: {"id": s} for m, s in STREAMS.items()},
                }
            },
        }
    )


def _seed(db: Path, per_meter: int) -> int:
    """A backlog from before the outage; returns the bytes the store uses with it."""
    start_ms = int(time.time() * 1000) - per_meter * 1000 - 5000
    with Store(db) as store:
        store.append(
            [
                Sample(m, start_ms + i * 1000, SDM630_VALUES)
                for i in range(per_meter)
                for m in STREAMS
            ]
        )
    with Store(db) as store:  # as the daemon will find it: the WAL checkpointed at close
        return store.used_bytes()  # (which counts the WAL: measured open, it was the seed's)


def _ever_stored(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        (seq,) = connection.execute(
            "SELECT seq FROM sqlite_sequence WHERE name='samples'"
        ).fetchone()
    connection.close()
    return int(seq)


def _undelivered(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        (count,) = connection.execute(
            "SELECT COUNT(*) FROM samples s JOIN cursors c ON c.meter = s.meter "
            "WHERE c.uplink = 'wattics' AND s.id > c.position"
        ).fetchone()
    connection.close()
    return int(count)


@pytest.mark.timeout(40)
async def test_a_full_disk_refuses_loudly_deletes_nothing_and_recovers_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(daemon_module, "PRUNE_EVERY_S", 0.3)
    caplog.set_level(logging.WARNING)
    db = tmp_path / DB_FILE
    seeded = 100
    budget = _seed(db, seeded) + HEADROOM_BYTES
    health = Health()
    async with (
        FakeWattics("disk", PASSWORD, set(STREAMS.values())) as wattics,
        serve_modbus_tcp(sdm630_meters(len(STREAMS))) as modbus,
    ):
        wattics.fail_for(3600)  # the cloud is down
        daemon = Daemon(_config(tmp_path, modbus.port, wattics.url, budget), health=health)
        task = asyncio.get_running_loop().create_task(daemon.run(), name="daemon")
        try:
            await eventually(
                lambda: health.store_full, timeout=15, interval=0.02, what="the store to fill up"
            )
            full_rows = sum(len(s) for s in stored_stamps(db).values())
            refused_before = sum(health.meter(m).errors["store_full"] for m in STREAMS)
            await asyncio.sleep(1.0)  # samples keep coming, and keep being refused
            # Nothing added, nothing deleted while full (retention runs, but nothing is delivered).
            assert sum(len(s) for s in stored_stamps(db).values()) == full_rows
            assert sum(health.meter(m).errors["store_full"] for m in STREAMS) >= refused_before + 10
            assert any(a.source == "store" and "refused" in a.message for a in health.alerts)
            assert "REFUSED" in caplog.text

            wattics.fail_for(0)  # the cloud is back: deliver, prune, and accept again
            await eventually(
                lambda: not health.store_full,
                timeout=15,
                interval=0.02,
                what="the store to accept again",
            )
            # Every meter's samples stored after the recovery reach Wattics (a meter whose older
            # samples were all delivered and pruned meanwhile has none stored: it counts from now).
            recovered_ms = int(time.time() * 1000)
            newest = {m: stamps[-1] for m, stamps in stored_stamps(db).items()}
            await eventually(
                lambda: all(
                    any(packet_ms(p) >= newest.get(m, recovered_ms) for p in wattics.delivered(s))
                    for m, s in STREAMS.items()
                ),
                timeout=10,
                interval=0.02,
                what="samples stored after the recovery to reach Wattics",
            )
        finally:
            daemon.stop()
            async with asyncio.timeout(10):
                await task

    accepted = {s: [packet_ms(p) for p in wattics.delivered(s)] for s in STREAMS.values()}
    # Nothing lost: every sample the store ever took is at Wattics or still queued.
    assert sum(len(a) for a in accepted.values()) + _undelivered(db) == _ever_stored(db)
    assert wattics.all_discarded() == []
    for stamps in accepted.values():
        assert len(stamps) > seeded  # the backlog and live samples after the recovery
    assert "accepting samples again" in caplog.text or "accepts samples again" in caplog.text


@pytest.mark.timeout(30)
async def test_a_corrupt_database_is_moved_aside_with_an_alert_and_the_daemon_runs_on(
    tmp_path: Path,
    daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess],
    mosquitto: MosquittoBroker,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = data_dir / DB_FILE
    with Store(db) as store:  # a real database with data, then an SD card's damage
        store.append([Sample("m1", 1_700_000_000_000 + i, SDM630_VALUES) for i in range(2000)])
    damaged = bytearray(db.read_bytes())
    for offset in range(8192, len(damaged) - 4096, 4096):
        damaged[offset + 100 : offset + 400] = b"\xff" * 300
    db.write_bytes(bytes(damaged))
    async with (
        FakeWattics("disk", PASSWORD, {"s-m1"}) as wattics,
        serve_modbus_tcp(sdm630_meters(1)) as modbus,
    ):
        config = tmp_path / "site.yaml"
        config.write_text(
            f"""\
gateway: {{id: faults, timezone: UTC, data_dir: "{data_dir}", clock_check: none}}
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: {modbus.port}, timeout_secs: 0.5}}
meters:
  - {{id: m1, bus: plant, unit: 1, model: sdm630, interval_secs: 200ms}}
uplinks:
  wattics:
    url: "{wattics.url}"
    username: disk
    password: ${{WATTICS_PASSWORD}}
    meters: {{m1: {{id: s-m1}}}}
mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, topic_prefix: mg, publish_interval_secs: 0.5}}
http: {{listen: "127.0.0.1:0"}}  # the alert asserted below is not a "port in use"
"""
        )
        daemon = daemon_factory(config, {"WATTICS_PASSWORD": PASSWORD})
        await daemon.start()
        await daemon.wait_running()
        await wattics.wait_accepted(3, timeout=10)
        state = await _retained_state(mosquitto)
        assert daemon.running
        assert await daemon.stop() == 0

    moved = [
        p
        for p in data_dir.iterdir()
        if ".corrupt-" in p.name and not p.name.endswith(("-wal", "-shm"))
    ]
    assert len(moved) == 1
    assert moved[0].read_bytes() == bytes(damaged)  # kept as evidence, not deleted
    assert state["alerts"] >= 1
    assert state["last_alert"]["source"] == "store"
    assert "corrupt" in state["last_alert"]["message"]
    assert "corrupt" in daemon.log_text()
    assert daemon.starts == 1  # one start: no crash loop
    assert stored_stamps(db)["m1"][0] > 1_700_000_000_000 + 2000  # a fresh store, live data


async def _retained_state(broker: MosquittoBroker) -> dict[str, object]:
    async with aiomqtt.Client(broker.host, broker.port, identifier="faults-probe") as client:
        await client.subscribe("mg/faults/state", qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                state = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                assert isinstance(state, dict)
                return state
    raise AssertionError("no retained state")
