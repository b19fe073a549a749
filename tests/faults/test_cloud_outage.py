"""The cloud goes away and comes back while the daemon polls: 503s, timeouts and dropped
connections, then recovery. Afterwards every stored sample was taken by Wattics once, in
order (a request that timed out after Wattics took it is repeated and discarded, never counted
twice); the meters kept their schedule throughout."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.simulator import serve_modbus_tcp
from gateway.daemon import DB_FILE
from tests.fakes.wattics import FakeWattics
from tests.faults.conftest import (
    DaemonProcess,
    long_form,
    packet_ms,
    sdm630_meters,
    stored_stamps,
)
from tests.helpers.eventually import eventually

PASSWORD = "cloud-outage-wattics-password"
INTERVAL_MS = 200
PHASE_S = 6.0 if long_form() else 1.2

CONFIG = """\
gateway: {{id: faults, timezone: Europe/Dublin, data_dir: "{data_dir}", clock_check: none}}
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: {modbus_port}, timeout_secs: 0.5}}
meters:
  - {{id: m1, bus: plant, unit: 1, model: sdm630, interval_secs: {interval}ms}}
  - {{id: m2, bus: plant, unit: 2, model: sdm630, interval_secs: {interval}ms}}
uplinks:
  wattics:
    url: "{url}"
    username: outage
    password: ${{WATTICS_PASSWORD}}
    timeout_secs: 0.3
    retry_initial_secs: 0.05
    retry_max_secs: 0.3
    commit_every_secs: 0.5
    meters: {{m1: {{id: s-m1}}, m2: {{id: s-m2}}}}
"""


@pytest.mark.slow
@pytest.mark.timeout(120 if long_form() else 40)
async def test_503s_timeouts_and_dropped_connections_then_everything_arrives_in_order(
    tmp_path: Path, daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess]
) -> None:
    data_dir = tmp_path / "data"
    async with (
        FakeWattics("outage", PASSWORD, {"s-m1", "s-m2"}) as wattics,
        serve_modbus_tcp(sdm630_meters(2)) as modbus,
    ):
        config = tmp_path / "site.yaml"
        config.write_text(
            CONFIG.format(
                data_dir=data_dir, modbus_port=modbus.port, url=wattics.url, interval=INTERVAL_MS
            )
        )
        daemon = daemon_factory(config, {"WATTICS_PASSWORD": PASSWORD})
        await daemon.start()
        await daemon.wait_running()
        await eventually(
            lambda: wattics.total_accepted() >= 4, timeout=10, interval=0.02, what="first packets"
        )
        wattics.fail_for(PHASE_S, 503, retry_after=0.1)  # the service is down
        await asyncio.sleep(PHASE_S)
        slow_from = wattics.requests
        wattics.slow(1.0)  # answers slower than the uplink's 0.3 s timeout
        await asyncio.sleep(PHASE_S)
        wattics.slow(0)
        slow_requests = wattics.requests - slow_from
        wattics.drop_connections(6)  # a flaky load balancer
        await asyncio.sleep(PHASE_S)
        assert await daemon.stop() == 0
        # The backlog the outage left is drained by the next run.
        stored = stored_stamps(data_dir / DB_FILE)
        await daemon.start()
        await daemon.wait_running()
        total = sum(len(stamps) for stamps in stored.values())
        await eventually(
            lambda: wattics.total_accepted() >= total, timeout=20, interval=0.02, what="the backlog"
        )
        assert await daemon.stop() == 0
    assert wattics.statuses[503] > 0 and wattics.dropped == 6
    for meter, stamps in stored.items():
        sent = [packet_ms(p) for p in wattics.delivered(f"s-{meter}")]
        assert sent[: len(stamps)] == stamps, meter  # all of it, once, in order
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert max(gaps) == INTERVAL_MS, f"{meter}: polling paused during the outage"
    # A request that timed out may still have been taken (the slow phase answers after the
    # uplink gave up, and its resync GET times out too): then the re-send is a repeat, which
    # Wattics discards. Never more than one per timed-out request, never double-counted.
    accepted = {(p["id"], p["tsISO8601"]) for s in ("s-m1", "s-m2") for p in wattics.delivered(s)}
    repeats = [(p["id"], p["tsISO8601"]) for p in wattics.all_discarded()]
    assert set(repeats) <= accepted
    assert len(repeats) <= slow_requests  # at most one per request that outlived its timeout
    assert "Traceback" not in daemon.all_logs()
