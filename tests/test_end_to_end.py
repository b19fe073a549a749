"""The daemon as a subprocess: simulated SDM630 -> store -> strict fake Wattics, MQTT status."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import aiomqtt
import pytest

from drivers.simulator import SimulatedMeter
from tests.fakes.wattics import FakeWattics
from tests.fixtures.modbus import SDM630_VALUES
from tests.fixtures.mosquitto import MosquittoBroker
from tests.helpers.eventually import eventually
from tests.paths import REPO

PASSWORD = "e2e-Pa55word-never-logged"
ZONE = "Australia/Adelaide"  # +10:30 / +09:30: a half-hour offset catches fixed-offset bugs

CONFIG = """\
gateway: {{id: e2e, timezone: {zone}, data_dir: "{data_dir}", clock_check: none}}
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: {modbus_port}, timeout_secs: 1.0}}
meters:
  - {{id: incomer, bus: plant, unit: 1, model: sdm630, interval_secs: 1s}}
uplinks:
  wattics:
    url: "{url}"
    username: e2e-user
    password: ${{WATTICS_PASSWORD}}
    retry_initial_secs: 0.05
    meters: {{incomer: {{id: stream-incomer}}}}
mqtt: {{host: 127.0.0.1, port: {mqtt_port}, topic_prefix: mg, keepalive_secs: 5}}
"""


def drain(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


async def retained(broker: MosquittoBroker, topic: str) -> str:
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=f"probe-{time.monotonic_ns()}"
    ) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                return message.payload.decode()  # type: ignore[union-attr]
    raise AssertionError("no retained message")


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_daemon_forwards_meter_values_in_local_time_and_stops_cleanly(
    tmp_path: Path,
    sdm630_server: tuple[int, SimulatedMeter],
    mosquitto: MosquittoBroker,
) -> None:
    modbus_port, meter = sdm630_server
    config = tmp_path / "site.yaml"
    async with FakeWattics("e2e-user", PASSWORD, {"stream-incomer"}) as wattics:
        config.write_text(
            CONFIG.format(
                zone=ZONE,
                data_dir=tmp_path / "data",
                modbus_port=modbus_port,
                url=wattics.url,
                mqtt_port=mosquitto.port,
            )
        )
        log = (tmp_path / "daemon.log").open("wb")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp_path / "notify.sock"))
        notify.setblocking(False)
        environment = {
            **os.environ,
            "WATTICS_PASSWORD": PASSWORD,
            "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
            "WATCHDOG_USEC": "1000000",
        }
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "gateway", "run", "-c", str(config)),
            cwd=REPO,
            env=environment,
            stdout=log,
            stderr=log,
        )
        notifications: list[str] = []

        async def read_notifications() -> None:  # as systemd does, all the time
            while True:
                notifications.extend(drain(notify))
                await asyncio.sleep(0.1)

        reader = asyncio.create_task(read_notifications(), name="notify-reader")
        try:
            await eventually(
                lambda: len(wattics.delivered("stream-incomer")) >= 3,
                timeout=15,
                interval=0.05,
                what="3 packets",
            )
            assert await retained(mosquitto, "mg/e2e/status") == "online"
            # The meter changes: later packets carry the new reading.
            meter.set_values({**SDM630_VALUES, "energy_active_import": 12_346_000.0})
            seen = len(wattics.delivered("stream-incomer"))
            await eventually(
                lambda: len(wattics.delivered("stream-incomer")) >= seen + 2,
                timeout=10,
                interval=0.05,
                what="more",
            )
            process.send_signal(signal.SIGTERM)
            stopped_at = time.monotonic()
            code = await asyncio.wait_for(process.wait(), 10)
            assert code == 0
            assert time.monotonic() - stopped_at < 10
            assert await retained(mosquitto, "mg/e2e/status") == "offline"
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            log.close()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            notifications.extend(drain(notify))
            notify.close()

    assert "READY=1" in notifications and "STOPPING=1" in notifications
    assert notifications.count("WATCHDOG=1") >= 3  # every 0.5 s for a run of several seconds
    assert notifications.index("READY=1") < notifications.index("STOPPING=1")
    packets = wattics.delivered("stream-incomer")
    assert wattics.all_discarded() == [] and wattics.rejected == []
    first = packets[0]
    assert first["v_1"] == SDM630_VALUES["voltage_l1"]
    assert first["c_3"] == SDM630_VALUES["current_l3"]
    assert first["aP_3"] == SDM630_VALUES["power_active_l3"]
    assert first["v_13"] == SDM630_VALUES["voltage_l3_l1"]
    assert first["pC_1"] == 12_345_500.0  # Wh: the meter's register says 12345.5 kWh
    assert packets[-1]["pC_1"] == 12_346_000.0
    stamps = [datetime.fromisoformat(str(p["tsISO8601"])) for p in packets]
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", str(p["tsISO8601"]))
        for p in packets
    )
    local_offset = datetime.now(ZoneInfo(ZONE)).utcoffset()
    assert all(s.utcoffset() == local_offset for s in stamps)
    assert all(b > a for a, b in itertools.pairwise(stamps))
    assert all(s.microsecond == 0 for s in stamps)  # aligned to whole seconds (1 s interval)
    log_text = (tmp_path / "daemon.log").read_text()
    assert PASSWORD not in log_text
    assert "running" in log_text and "stopped" in log_text
