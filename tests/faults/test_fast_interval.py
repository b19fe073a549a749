"""The smallest accepted interval (100 ms) on a meter too slow for it, as the real daemon.

`interval_secs: 1ms` used to be accepted: 650 log lines a second and SIGTERM ignored for 15 s.
Now 100 ms is the least (tests/security/test_config_ranges.py); at that rate, on a meter whose
read takes longer than a tick, the overrun is logged once (and counted), not once per tick, and
SIGTERM stops the daemon at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.simulator import serve_modbus_tcp
from tests.faults.conftest import DaemonProcess, sdm630_meters, slow_proxy

SITE = """\
gateway: {{id: site-1, timezone: UTC, data_dir: "{data_dir}", clock_check: none}}
buses: {{plant: {{type: modbus-tcp, host: 127.0.0.1, port: {port}, timeout_secs: 1}}}}
meters:
  - {{id: m1, bus: plant, unit: 1, model: sdm630, interval_secs: 100ms}}
"""


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_the_smallest_interval_on_a_meter_too_slow_for_it_logs_once_and_stops_at_once(
    tmp_path: Path, daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess]
) -> None:
    async with (
        serve_modbus_tcp(sdm630_meters(1)) as modbus,
        slow_proxy(modbus.port, 0.06) as port,  # a read of ~3 requests: ~180 ms per 100 ms tick
    ):
        config = tmp_path / "site.yaml"
        config.write_text(SITE.format(data_dir=tmp_path / "data", port=port, interval="100ms"))
        daemon = daemon_factory(config, {})
        await daemon.start()
        await daemon.wait_running()
        await asyncio.sleep(3.0)
        started = time.monotonic()
        assert await daemon.stop(timeout=10) == 0
        stop_s = time.monotonic() - started
    log = daemon.log_text()
    overruns = [line for line in log.splitlines() if "overran its" in line]
    assert 1 <= len(overruns) <= 2, overruns  # said once (and again only after recovering)
    assert len(log.splitlines()) < 40, log[-3000:]
    assert "did not stop within" not in log
    assert stop_s < 5.0, stop_s
