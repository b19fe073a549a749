"""No MQTT broker for the whole run: meters are read, stored and delivered as if it were there.

Two ways a broker is "absent": nothing listens on its port (connection refused at once), or a
black hole accepts the TCP connection and never answers CONNECT (the client waits for its
timeout). Either way the data path must not notice: every 200 ms boundary gets its sample,
Wattics receives them as they come, and the log says once that the broker is unreachable
instead of once per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
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
from tests.fixtures.network import free_port
from tests.helpers.eventually import eventually

PASSWORD = "mqtt-absent-wattics-password"
INTERVAL_MS = 200
RUN_S = 20.0 if long_form() else 2.0

CONFIG = """\
gateway: {{id: faults, timezone: UTC, data_dir: "{data_dir}", clock_check: none}}
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: {modbus_port}, timeout_secs: 0.5}}
meters:
  - {{id: m1, bus: plant, unit: 1, model: sdm630, interval_secs: {interval}ms}}
uplinks:
  wattics:
    url: "{url}"
    username: mqtt-absent
    password: ${{WATTICS_PASSWORD}}
    retry_initial_secs: 0.05
    meters: {{m1: {{id: s-m1}}}}
mqtt:
  host: 127.0.0.1
  port: {mqtt_port}
  timeout_secs: 0.5
  reconnect_max_secs: 0.5
  publish_interval_secs: 0.5
  publish_values: true
"""


@contextlib.asynccontextmanager
async def _black_hole() -> AsyncIterator[int]:
    """A TCP listener that accepts connections and never says a word; yields its port."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def _closed_port() -> AsyncIterator[int]:
    yield free_port()


@pytest.mark.parametrize("broker", [_closed_port, _black_hole], ids=["refused", "black-hole"])
@pytest.mark.timeout(90 if long_form() else 30)
async def test_without_a_broker_every_sample_is_stored_and_delivered_on_time(
    tmp_path: Path,
    daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess],
    broker: Callable[[], contextlib.AbstractAsyncContextManager[int]],
) -> None:
    data_dir = tmp_path / "data"
    async with (
        FakeWattics("mqtt-absent", PASSWORD, {"s-m1"}) as wattics,
        serve_modbus_tcp(sdm630_meters(1)) as modbus,
        broker() as mqtt_port,
    ):
        config = tmp_path / "site.yaml"
        config.write_text(
            CONFIG.format(
                data_dir=data_dir,
                modbus_port=modbus.port,
                url=wattics.url,
                mqtt_port=mqtt_port,
                interval=INTERVAL_MS,
            )
        )
        daemon = daemon_factory(config, {"WATTICS_PASSWORD": PASSWORD})
        await daemon.start()
        await daemon.wait_running()
        await asyncio.sleep(RUN_S)
        # Delivered as they come: within a second of being stored, not in a burst at the end.
        stored = stored_stamps(data_dir / DB_FILE)["m1"]
        await eventually(
            lambda: {packet_ms(p) for p in wattics.delivered("s-m1")} >= set(stored),
            timeout=1.0,
            interval=0.02,
            what="Wattics to have every stored sample",
        )
        assert await daemon.stop() == 0

    stamps = stored_stamps(data_dir / DB_FILE)["m1"]
    # Every boundary has its sample: no gap while the MQTT client kept failing.
    assert len(stamps) >= RUN_S * 1000 / INTERVAL_MS - 2
    assert all(b - a == INTERVAL_MS for a, b in itertools.pairwise(stamps)), stamps
    assert [packet_ms(p) for p in wattics.delivered("s-m1")] == stamps
    log = daemon.all_logs()
    assert log.count("unreachable") == 1, log  # said once, not per attempt
    assert "Traceback" not in log
