"""A restart of the real daemon leaves no hole in a Wattics datapoint with a registered interval.

Wattics "expects to receive data at the agreed time interval, so data holes will be assumed if
no packets are being received when due". While the daemon is down (a clean restart with
SIGTERM, or a power cut: kill -9) nothing is polled, so the boundaries of that time have no
sample of their own; the newest sample before them lies within the datapoint's tolerance
(60 s) and must fill them, on the restarted process too: the boundary picker resumes from the
last boundary it sent (committed with the cursor), not afresh.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.simulator import serve_modbus_tcp
from gateway.daemon import DB_FILE
from tests.fakes.wattics import FakeWattics
from tests.faults.conftest import DaemonProcess, packet_ms, sdm630_meters, stored_stamps
from tests.helpers.eventually import eventually

PASSWORD = "restart-wattics-password"
STREAM = "s-1s"

CONFIG = """\
gateway:
  {{id: faults, timezone: Europe/Dublin, data_dir: "{data_dir}", clock_check: none}}
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: {port}, timeout_secs: 0.5}}
meters:
  - {{id: m1, bus: plant, unit: 1, model: sdm630, interval_secs: 1}}
uplinks:
  wattics:
    url: "{url}"
    username: restart
    password: ${{WATTICS_PASSWORD}}
    retry_initial_secs: 0.05
    retry_max_secs: 0.5
    shutdown_grace_secs: 0.5
    tolerance_secs: 60
    meters:
      m1: {{id: {stream}, interval_secs: 1}}
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("stop", ["sigterm", "kill9"])
async def test_a_restart_leaves_no_hole_a_stored_sample_can_fill(
    tmp_path: Path,
    daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess],
    stop: str,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    async with (
        FakeWattics("restart", PASSWORD, {STREAM}) as wattics,
        serve_modbus_tcp(sdm630_meters(1)) as modbus,
    ):
        wattics.register(STREAM, "electricity", interval_s=1)
        config = tmp_path / "site.yaml"
        config.write_text(
            CONFIG.format(data_dir=data_dir, port=modbus.port, url=wattics.url, stream=STREAM)
        )
        daemon = daemon_factory(config, {"WATTICS_PASSWORD": PASSWORD})
        for cycle in range(3):
            await daemon.start()
            await daemon.wait_running()
            before = len(wattics.delivered(STREAM))
            await eventually(
                lambda before=before: len(wattics.delivered(STREAM)) >= before + 3,
                timeout=20,
                what="packets from this start",
            )
            if cycle == 2:
                break
            if stop == "sigterm":
                assert await daemon.stop() == 0
            else:
                assert await daemon.kill9() == -9
            # Down (with the next start's ~0.5 s): one or more boundaries without a sample,
            # >= 2 s of gap, which the `gaps` assert below checks is there.
            await asyncio.sleep(1.5)
        await modbus.stop()
        stored = stored_stamps(data_dir / DB_FILE)["m1"]
        await eventually(
            lambda: packet_ms(wattics.delivered(STREAM)[-1]) >= stored[-1],
            timeout=20,
            what="the last stored sample to be sent",
        )
        assert await daemon.stop() == 0

    accepted = [packet_ms(p) for p in wattics.delivered(STREAM)]
    gaps = [b - a for a, b in itertools.pairwise(stored) if b - a > 1000]
    assert len(gaps) >= 2, f"the restarts left no gap in the stored series: {gaps}"
    assert wattics.holes(STREAM) == 0, (
        f"{wattics.holes(STREAM)} boundaries without a packet; stored gaps {gaps} ms"
    )
    assert accepted == sorted(set(accepted))
    assert accepted[0] == stored[0] and accepted[-1] == stored[-1]
    assert wattics.off_grid[STREAM] == 0
    assert wattics.rejected == []
    logs = daemon.all_logs()
    assert "Traceback" not in logs, logs[logs.find("Traceback") - 500 :][:4000]
