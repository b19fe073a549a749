"""`meter-gateway status` as an installer runs it, in its own process, against a running
daemon, a stopped one, an empty store and a store with a backlog and dead letters."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.health import Health
from core.sample import Sample
from drivers.simulator import SimulatedMeter
from gateway.config.loader import load_config
from gateway.daemon import DB_FILE
from gateway.ops import snapshot
from gateway.store.database import Store
from tests.fakes.wattics import FakeWattics
from tests.gateway.ops.status_site import PASSWORD, STREAM, USER, status_config
from tests.gateway.ops.test_monitor_daemon import daemon_running
from tests.helpers.eventually import eventually
from tests.paths import REPO


async def status(config: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway", "status", "-c", str(config), *args),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def status_json(config: Path) -> tuple[int, dict[str, Any]]:
    code, out, err = await status(config, "--json")
    assert code in (0, 1), err
    document: dict[str, Any] = json.loads(out)
    return code, document


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def store_files(folder: Path) -> list[str]:
    """The store's files but its disk-full reserve (the writer's, not status's)."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name.startswith(DB_FILE) and not p.name.endswith("-reserve")
    )


@pytest.fixture
async def wattics() -> Any:
    async with FakeWattics(USER, PASSWORD, {STREAM}) as fake:
        yield fake


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_status_of_a_running_then_a_stopped_daemon(
    tmp_path: Path,
    sdm630_server: tuple[int, SimulatedMeter],
    wattics: FakeWattics,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The daemon saves its snapshot every second here (15 s on a site): `status` sees the first
    # reads in a second, not in fifteen. Staleness (snapshot.STALE_AFTER_S) is `status`'s own.
    monkeypatch.setattr(snapshot, "SNAPSHOT_EVERY_S", 1.0)
    config = status_config(tmp_path, sdm630_server[0], wattics)
    path = write_config(
        tmp_path,
        config.model_dump(mode="json", exclude_defaults=True)
        | {
            "uplinks": {
                "wattics": {
                    **config.model_dump(mode="json")["uplinks"]["wattics"],
                    "username": USER,
                    "password": PASSWORD,
                }
            }
        },
    )
    async with daemon_running(load_config(path), Health()):
        await wattics.wait_accepted(3, timeout=10)

        async def snapshot_after_reads() -> tuple[int, dict[str, Any]] | None:
            code, doc = await status_json(path)  # the snapshot is saved every second
            return (code, doc) if doc["meters"]["incomer"]["state"] != "unknown" else None

        code, doc = await eventually(snapshot_after_reads, timeout=30, interval=0.5)
        assert code == 0, doc["attention"]
        assert doc["running"] is True and doc["ok"] is True and doc["attention"] == []
        assert doc["meters"]["incomer"]["state"] == "ok"
        assert doc["meters"]["incomer"]["last_sample_ms"] is not None
        stream = doc["uplinks"]["wattics"]["streams"][STREAM]
        assert stream["meter"] == "incomer" and stream["dead_letters"] == 0
        assert doc["store"]["bytes"] > 0
        code, text, _ = await status(path)
        assert code == 0
        assert "● meter-gateway site-1 - running (pid" in text and "all well" in text
        assert "incomer" in text and f"wattics/{STREAM}" in text
        assert PASSWORD not in text and USER not in text
    code, doc = await status_json(path)
    assert code == 1 and doc["running"] is False
    assert doc["attention"][0]["subject"] == "daemon"
    assert "not running: stopped" in doc["attention"][0]["message"]
    code, text, _ = await status(path)
    assert code == 1 and "stopped at" in text and "NEEDS ATTENTION" in text
    assert store_files(tmp_path) == [DB_FILE]  # status left no -wal/-shm behind


async def test_status_of_an_empty_store(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"gateway": {"id": "site-1", "data_dir": str(tmp_path / "d")}})
    code, text, _ = await status(path)
    assert code == 1 and "no store at" in text and "has not run" in text
    assert not (tmp_path / "d").exists()  # status created nothing
    (tmp_path / "d").mkdir()
    Store(tmp_path / "d" / DB_FILE).close()
    code, doc = await status_json(path)
    assert code == 1 and doc["running"] is False
    assert "has not run with this store yet" in doc["attention"][0]["message"]


async def test_status_of_a_store_with_a_backlog_and_dead_letters(tmp_path: Path) -> None:
    data = {
        "gateway": {"id": "site-1", "data_dir": str(tmp_path)},
        "buses": {"plant": {"type": "modbus-tcp", "host": "127.0.0.1", "port": 1502}},
        "meters": [{"id": "incomer", "bus": "plant", "model": "sdm630"}],
        "uplinks": {
            "wattics": {
                "url": "https://api.wattics.com/push",
                "username": USER,
                "password": PASSWORD,
                "meters": {"incomer": {"id": STREAM}},
            }
        },
    }
    path = write_config(tmp_path, data)
    start = 1_700_000_000_000
    with Store(tmp_path / DB_FILE) as store:
        store.register_stream("wattics", STREAM, "incomer")
        ids = store.append(
            [Sample("incomer", start + i * 60_000, {"power_active": 1.0}) for i in range(10)]
        )
        store.advance("wattics", STREAM, ids[3] or 0)
        for position in (ids[4], ids[5]):
            store.park(
                "wattics",
                STREAM,
                position or 0,
                payload="{}",
                status=400,
                body="no",
                attempts=3,
                now_ms=start,
            )
    code, doc = await status_json(path)
    assert code == 1
    stream = doc["uplinks"]["wattics"]["streams"][STREAM]
    assert (stream["backlog_rows"], stream["dead_letters"]) == (4, 2)
    assert stream["oldest_undelivered_ms"] == start + 6 * 60_000
    assert doc["meters"]["incomer"]["last_sample_ms"] == start + 9 * 60_000
    messages = [f"{a['subject']}: {a['message']}" for a in doc["attention"]]
    assert any("2 dead letter(s)" in m and "deadletters --uplink wattics" in m for m in messages)
    assert any(f"wattics/{STREAM}: 4 sample(s) waiting" in m for m in messages)
    code, text, _ = await status(path)
    assert code == 1
    assert f"wattics/{STREAM}" in text and "2 dead letter(s)" in text
    assert store_files(tmp_path) == [DB_FILE]  # status left no -wal/-shm behind


async def test_a_config_error_exits_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"gateway": {"id": "site-1", "colour": "blue"}})
    code, _, err = await status(path)
    assert code == 2 and "colour" in err
