"""kill -9 of the daemon while a Wattics packet is in flight: on restart nothing is sent twice
(resync with the service's last processed packet) and nothing is missing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

from drivers.simulator import SimulatedMeter
from gateway.daemon import DB_FILE
from gateway.store.database import Store
from gateway.timefmt import local_iso8601_ms
from tests.fakes.wattics import FakeWattics
from tests.helpers.eventually import eventually
from tests.paths import REPO

ZONE = "Europe/Dublin"
CONFIG = """\
gateway: {{id: crash, timezone: {zone}, data_dir: "{data_dir}", clock_check: none}}
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: {modbus_port}, timeout_secs: 1.0}}
meters:
  - {{id: a, bus: plant, unit: 1, model: sdm630, interval_secs: 0.2s}}
  - {{id: b, bus: plant, unit: 1, model: sdm630, interval_secs: 0.2s}}
uplinks:
  wattics:
    url: "{url}"
    username: crash-user
    password: crash-pw
    retry_initial_secs: 0.05
    retry_max_secs: 0.2
    commit_every_packets: 1000
    commit_every_secs: 600
    meters: {{a: {{id: stream-a}}, b: {{id: stream-b}}}}
"""


async def start_daemon(config: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as output:
        return await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "gateway", "run", "-c", str(config)),
            cwd=REPO,
            env=dict(os.environ),
            stdout=output,
            stderr=output,
        )


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_kill_9_mid_send_then_restart_sends_nothing_twice_and_loses_nothing(
    tmp_path: Path, sdm630_server: tuple[int, SimulatedMeter]
) -> None:
    modbus_port, _ = sdm630_server
    config, log = tmp_path / "site.yaml", tmp_path / "daemon.log"
    async with FakeWattics("crash-user", "crash-pw", {"stream-a", "stream-b"}) as wattics:
        config.write_text(
            CONFIG.format(
                zone=ZONE, data_dir=tmp_path / "data", modbus_port=modbus_port, url=wattics.url
            )
        )
        process = await start_daemon(config, log)
        try:
            for round_ in range(3):
                seen = wattics.total_accepted()
                await eventually(
                    lambda s=seen: wattics.total_accepted() >= s + 6,
                    timeout=15,
                    interval=0.05,
                    what="packets",
                )
                if round_ == 1:
                    wattics.lose_answers(2)  # taken, but the answer never comes back
                else:
                    wattics.slow(30, after_processing=True)  # taken; the answer is held
                    taken = wattics.total_accepted()
                    await eventually(
                        lambda t=taken: wattics.total_accepted() > t,
                        timeout=5,
                        interval=0.05,
                        what="in flight",
                    )
                # The cursor commits rarely (commit_every_*): many acknowledged packets are
                # not yet committed either, and only the resync can keep them from repeating.
                process.send_signal(signal.SIGKILL)
                await process.wait()
                wattics.slow(0)
                process = await start_daemon(config, log)
            await eventually(
                lambda: wattics.total_accepted() >= 40,
                timeout=20,
                interval=0.05,
                what="more packets",
            )
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 15) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        # Delivery of what the last run stored may still be pending: run once more to drain.
        process = await start_daemon(config, log)
        try:
            with Store(tmp_path / "data" / DB_FILE) as store:
                stored = {m: [r.sample.ts_ms for r in store.read(m, 0, 100_000)] for m in "ab"}
            total = sum(len(v) for v in stored.values())
            await eventually(
                lambda: wattics.total_accepted() >= total,
                timeout=20,
                interval=0.05,
                what="the whole store",
            )
        finally:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 15)
            if process.returncode is None:
                process.kill()
                await process.wait()
    for meter in "ab":
        sent = [p["tsISO8601"] for p in wattics.delivered(f"stream-{meter}")]
        assert sent == [local_iso8601_ms(ts, ZONE) for ts in stored[meter]], meter
    assert wattics.all_discarded() == [], "a packet was sent twice"
    assert wattics.lost_answers == 2
