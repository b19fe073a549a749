"""`meter-gateway pts ...`, the MQTT `pts/submit` command, the registry, and `run()` over a
whole reporting window on the virtual clock."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml

from core.health import Health
from gateway.cli import pts as pts_cli
from gateway.cli.main import main
from gateway.config.loader import load_config
from gateway.config.schema import MqttCommandsConfig
from gateway.ops.commands import CommandHandler
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from gateway.uplinks.pts.uplink import PtsUplink
from gateway.uplinks.registry import UplinkContext, build_uplinks
from tests.fakes.pts import FakePts
from tests.fixtures.pts import KEY
from tests.gateway.uplinks.pts.pts_helpers import (
    alerts,
    counted,
    eastern_s,
    feed,
    ledger,
    make_config,
    make_uplink,
)
from tests.helpers.clock import ManualClock


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """`main()` sets up logging to the (captured) stderr: undo it after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def write_config(tmp_path: Path, fake: FakePts | None, **pts: object) -> Path:
    document = {
        "gateway": {"id": "site-1", "timezone": "America/New_York", "data_dir": str(tmp_path)},
        "buses": {"plant": {"type": "modbus-tcp", "host": "127.0.0.1"}},
        "meters": [{"id": "pv", "bus": "plant", "model": "sdm630"}],
        "uplinks": {
            "pts": {
                "subscription_key": KEY,
                "systems": {"pv": {"fk_system": 1000, "capacity_kw": 10.0}},
                **({"base_url": fake.base_url} if fake else {}),
                **pts,
            }
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    pts_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["pts", *argv])


def test_status_and_quota_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, None)
    assert main(["pts", "status", "-c", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    system = report["systems"]["1000"]
    assert system["meter"] == "pv" and system["capacity_kw"] == 10.0
    assert system["quota"] == {
        "passed": 0,
        "failed": 0,
        "pending": 0,
        "max_valid": 2,
        "max_failed": 3,
        "override": None,
    }
    period = system["period"]

    argv = ["pts", "quota", "-c", str(path), "--system", "1000", "--valid", "2"]
    assert main([*argv, "--failed", "5", "--reason", "ticket 42", "--period", period]) == 0
    assert f"window {period}: 2 valid, 5 failed (ticket 42)" in capsys.readouterr().out
    assert main(["pts", "status", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "system 1000 (meter pv)" in out
    assert "0/2 valid, 0/5 failed, 0 pending (help desk: ticket 42)" in out
    assert KEY not in out

    assert main(["pts", "quota", "-c", str(path), "--system", "7", "--valid", "1",
                 "--failed", "1", "--reason", "x", "--period", period]) == 2  # fmt: skip


def test_pts_commands_need_a_pts_section(tmp_path: Path) -> None:
    path = write_config(tmp_path, None)
    document = yaml.safe_load(path.read_text())
    del document["uplinks"]["pts"]
    path.write_text(yaml.safe_dump(document))
    assert main(["pts", "status", "-c", str(path)]) == 2


def test_production_needs_its_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, None, environment="production")
    with pytest.raises(SystemExit) as exit_:
        main(["pts", "status", "-c", str(path)])
    assert exit_.value.code == 2
    assert "production needs base_url and path_prefix" in capsys.readouterr().err


async def test_manual_submission_from_the_command_line(
    tmp_path: Path, fake_pts: FakePts, pts_clock: ManualClock, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_pts.validation_delay_secs = 0
    config = load_config(write_config(tmp_path, fake_pts, status_poll_secs=0.05))
    pts_clock.now = eastern_s(2026, 2, 2, 9)
    astore = AsyncStore(Store(tmp_path / "gateway.sqlite3"))
    try:
        await feed(astore, eastern_s(2026, 1, 30), eastern_s(2026, 2, 2, 9))
    finally:
        await astore.aclose()

    assert await pts_cli.run_async(parse("submit", "--system", "1000", "--test"), config,
                                   clock=pts_clock) == 0  # fmt: skip
    assert "system 1000: tested" in capsys.readouterr().out
    code = await pts_cli.run_async(
        parse("submit", "--system", "1000", "--wait", "5"), config, clock=pts_clock
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "system 1000: submitted" in out and "2026-02-01T00:00:00" in out
    assert "validation: passed" in out
    again = await pts_cli.run_async(parse("submit", "--system", "1000"), config, clock=pts_clock)
    assert again == 0 and "already_passed" in capsys.readouterr().out
    assert len(fake_pts.submitted(1000)) == 1

    assert await pts_cli.run_async(parse("status"), config, clock=pts_clock) == 0
    out = capsys.readouterr().out
    assert "state    passed" in out and "1/2 valid, 0/3 failed" in out


@pytest.fixture
async def astore(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    astore = AsyncStore(Store(tmp_path / "queue.db"))
    yield astore
    await astore.aclose()


async def test_mqtt_pts_submit_command_runs_a_dry_run(
    fake_pts: FakePts, pts_clock: ManualClock, astore: AsyncStore
) -> None:
    await feed(astore, eastern_s(2026, 1, 28), eastern_s(2026, 2, 2))
    health = Health()
    uplink = make_uplink(make_config(fake_pts), astore, pts_clock, health)
    handler = CommandHandler(
        MqttCommandsConfig(pts_submit=True), health=health, uplinks={"pts": uplink}
    )
    try:
        pts_clock.now = eastern_s(2026, 2, 1, 12)
        dry = await handler.handle("pts/submit", b'{"request_id": 7}')
        assert fake_pts.count("ARPost") == 0 and fake_pts.count("ARPostTest") == 1
        real = await handler.handle("pts/submit", b'{"dry_run": false}')
    finally:
        await uplink.aclose()
    assert dry["ok"] is True and dry["request_id"] == 7 and dry["dry_run"] is True
    assert dry["systems"][0]["action"] == "tested"
    assert real["ok"] is True and real["systems"][0]["action"] == "submitted"
    assert len(fake_pts.submitted(1000)) == 1


async def test_registry_builds_the_pts_uplink(tmp_path: Path, astore: AsyncStore) -> None:
    config = load_config(write_config(tmp_path, None))
    [uplink] = build_uplinks(UplinkContext(config, astore, Health()))
    assert isinstance(uplink, PtsUplink)
    assert uplink.name == "pts" and uplink.streams() == {"system-1000": "pv"}
    assert uplink.config.api_root == "https://automatedreporting.masscec-pts.com/ptsstaging"


async def test_run_over_a_whole_window_submits_once_and_releases_samples(
    fake_pts: FakePts, astore: AsyncStore
) -> None:
    await feed(astore, eastern_s(2026, 1, 20), eastern_s(2026, 2, 8))
    # sleeping advances virtual time at once, until Feb 8: there the uplink is held
    clock = ManualClock(eastern_s(2026, 1, 25), stop_at=eastern_s(2026, 2, 8))
    fake_pts.clock = clock.time
    health = Health()
    config = make_config(fake_pts, check_every_secs=3600, status_poll_secs=600)
    uplink = make_uplink(config, astore, clock, health)
    task = asyncio.create_task(uplink.run(), name="pts-run")
    try:
        async with asyncio.timeout(20):
            await clock.reached.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [(s.meter_date, s.passed) for s in fake_pts.submitted(1000)] == [
        ("2026-02-01T00:00:00", True)
    ]
    assert [status for _, status, _, _ in counted(await ledger(astore))] == ["passed"]
    assert alerts(health) == []
    assert clock.sleeps < 400  # hourly passes plus a few status polls, no busy loop
    # Few calls: one reading, tested once, posted once; systems confirmed daily.
    calls = {op: fake_pts.count(op) for op in ("ARPost", "ARPostTest", "GetLastReading")}
    assert calls == {"ARPost": 1, "ARPostTest": 1, "GetLastReading": 1}
    assert fake_pts.count("GetSystems") == 14  # Jan 25 .. Feb 7, daily
    assert fake_pts.count("GetSubmissionStatus") <= 3  # before posting, then until Passed
    # After the pass, PTS holds nothing back: the cursor follows the newest sample (the last
    # pass ran within the hour before Feb 8), far past January's window.
    position = await astore.cursor("pts", "system-1000")
    held = await astore.read("pv", position, 10_000)
    assert held and held[0].sample.ts_ms >= int(eastern_s(2026, 2, 7, 23) * 1000)


async def test_window_samples_survive_retention_until_the_reading_passed(
    fake_pts: FakePts, pts_clock: ManualClock, astore: AsyncStore
) -> None:
    await feed(astore, eastern_s(2026, 1, 20), eastern_s(2026, 2, 4))
    retention_ms = 48 * 3600 * 1000
    window_open_ms = int(eastern_s(2026, 1, 27) * 1000)
    uplink = make_uplink(make_config(fake_pts, test_before_submit=False), astore, pts_clock)
    try:
        pts_clock.now = eastern_s(2026, 2, 3, 23)
        await uplink.step()  # submits; validating
        now_ms = int(pts_clock.now * 1000)
        await astore.prune(now_ms, retention_ms)
        kept = await astore.find_sample("pv", 0, now_ms)
        assert kept is not None and kept.sample.ts_ms // 1000 == window_open_ms // 1000
        pts_clock.now += 700
        await uplink.step()  # passed: the window's samples are released
        await astore.prune(int(pts_clock.now * 1000), retention_ms)
        first = await astore.find_sample("pv", 0, int(pts_clock.now * 1000))
    finally:
        await uplink.aclose()
    assert first is not None
    assert first.sample.ts_ms >= int(pts_clock.now * 1000) - retention_ms
