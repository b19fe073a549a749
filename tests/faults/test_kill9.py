"""kill -9 of the daemon at random moments while meters are polled and Wattics is sent to.

What a site owner checks after a week of power cuts: every sample the gateway stored reached
the cloud, each meter's packets arrived in time order, and anything sent twice was at most
what was unconfirmed at the moment of the cut. To make the "unconfirmed" part real, resync on
start is switched OFF (with it, the gateway asks Wattics first and sends even less twice): the
bound tested is the uplink's commit group, `commit_every_packets` per stream and kill.

Short form: 20 kills (< 60 s). Long form (MG_FAULTS_LONG=1): 100 kills.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.sample import Sample
from drivers.simulator import serve_modbus_tcp
from gateway.daemon import DB_FILE
from gateway.store.database import Store
from tests.fakes.wattics import FakeWattics
from tests.faults.conftest import (
    DaemonProcess,
    long_form,
    packet_ms,
    sdm630_meters,
    stored_stamps,
)
from tests.fixtures.modbus import SDM630_VALUES
from tests.helpers.eventually import eventually

KILLS = 100 if long_form() else 20
PASSWORD = "kill9-wattics-password"
#: Packets acknowledged but not yet committed to a stream's cursor: at most this many per kill
#: are sent again (the uplink commits every COMMIT_EVERY acknowledged packets).
COMMIT_EVERY = 5
#: meter id -> (Modbus unit, Wattics stream, interval)
METERS = {"m1": (1, "s-m1", "200ms"), "m2": (2, "s-m2", "200ms"), "m3": (3, "s-m3", "300ms")}
#: Samples per meter stored before the first start, "from a cloud outage": the uplink is busy
#: sending through the first kills instead of idling between live samples.
BACKLOG = 400

CONFIG = """\
gateway:
  {{id: faults, timezone: Europe/Dublin, data_dir: "{data_dir}", clock_check: none}}
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: {port}, timeout_secs: 0.5}}
meters:
{meters}
uplinks:
  wattics:
    url: "{url}"
    username: kill9
    password: ${{WATTICS_PASSWORD}}
    retry_initial_secs: 0.05
    retry_max_secs: 0.5
    commit_every_packets: {commit_every}
    commit_every_secs: 30
    resync_on_start: false
    shutdown_grace_secs: 0.5
    meters:
{streams}
"""


def _config(data_dir: Path, port: int, url: str) -> str:
    meters = "\n".join(
        f"  - {{id: {m}, bus: plant, unit: {unit}, model: sdm630, interval_secs: {every}}}"
        for m, (unit, _, every) in METERS.items()
    )
    streams = "\n".join(f"      {m}: {{id: {stream}}}" for m, (_, stream, _) in METERS.items())
    return CONFIG.format(
        data_dir=data_dir,
        port=port,
        url=url,
        meters=meters,
        streams=streams,
        commit_every=COMMIT_EVERY,
    )


def _seed_backlog(db: Path) -> None:
    now_ms = int(time.time()) * 1000
    with Store(db) as store:
        store.append(
            [
                Sample(meter, now_ms - (BACKLOG - i) * 1000 - 500, SDM630_VALUES)
                for i in range(BACKLOG)
                for meter in METERS
            ]
        )


@pytest.mark.slow
@pytest.mark.timeout(400 if long_form() else 60)
async def test_kill9_at_random_moments_loses_nothing_and_keeps_order(
    tmp_path: Path,
    daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess],
    fault_seed: int,
) -> None:
    rng = random.Random(fault_seed)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = data_dir / DB_FILE
    _seed_backlog(db)
    streams = {stream for _, stream, _ in METERS.values()}
    exit_codes: list[int] = []
    async with (
        FakeWattics("kill9", PASSWORD, streams) as wattics,
        serve_modbus_tcp(sdm630_meters(len(METERS))) as modbus,
    ):
        wattics.slow(0.002)  # a little latency: requests are in flight when the kill comes
        config = tmp_path / "site.yaml"
        config.write_text(_config(data_dir, modbus.port, wattics.url))
        daemon = daemon_factory(config, {"WATTICS_PASSWORD": PASSWORD})
        for cycle in range(KILLS):
            await daemon.start()
            if cycle % 4 == 3:  # now and then while it is still starting (store open, imports)
                await asyncio.sleep(rng.uniform(0.05, 0.6))
            else:
                await daemon.wait_running()
                await asyncio.sleep(rng.uniform(0.0, 0.7))
            assert daemon.running, f"the daemon died by itself:\n{daemon.log_text()[-3000:]}"
            exit_codes.append(await daemon.kill9())

        # The end: meters go quiet (no new samples) and the last start drains the store.
        await modbus.stop()
        await daemon.start()
        await daemon.wait_running()
        stored = stored_stamps(db)
        await eventually(
            lambda: all(
                {packet_ms(p) for p in wattics.delivered(METERS[m][1])} >= set(stamps)
                for m, stamps in stored.items()
            ),
            timeout=20,
            interval=0.02,
            what="the backlog to drain",
        )
        assert await daemon.stop() == 0

    assert exit_codes == [-9] * KILLS
    final = stored_stamps(db)
    assert final == stored  # nothing was stored after the meters went quiet
    for meter, (_, stream, _) in METERS.items():
        stamps = final[meter]
        live = stamps[BACKLOG:]
        assert len(live) >= KILLS // 2, f"{meter}: too few live samples for a real test"
        assert stamps == sorted(set(stamps)), f"{meter}: the store broke time order"
        accepted = [packet_ms(p) for p in wattics.delivered(stream)]
        # Nothing missing, nothing invented, in time order (the fake accepts only later ones).
        assert accepted == stamps, f"{meter}: Wattics holds a different series than the store"
        # Every packet Wattics discarded is a repeat of one it has: order was never broken.
        repeats = [packet_ms(p) for p in wattics.discarded.get(stream, [])]
        assert set(repeats) <= set(accepted)
        assert len(repeats) <= KILLS * COMMIT_EVERY, f"{meter}: {len(repeats)} duplicates"
    assert wattics.rejected == []
    logs = daemon.all_logs()
    assert "Traceback" not in logs, logs[logs.find("Traceback") - 500 :][:4000]
