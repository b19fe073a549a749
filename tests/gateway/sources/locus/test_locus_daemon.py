"""The daemon runs the Locus source from config; Wattics gets its samples unchanged, in order."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from core.health import Health, MeterState
from core.sample import Sample
from gateway.config.loader import parse_config
from gateway.daemon import DB_FILE, Daemon
from gateway.store.database import Store
from gateway.timefmt import local_iso8601_ms
from tests.fakes.locus import energy_wh
from tests.fakes.wattics import FakeWattics
from tests.fixtures.locus import SECRETS, locus_yaml, make_fake
from tests.fixtures.wattics import PASSWORD, USERNAME

ZONE = "America/New_York"
STEP_MS = 300_000

CONFIG = """\
gateway: {{id: e2e, timezone: {zone}, data_dir: "{data_dir}", clock_check: none}}
{source}uplinks:
  wattics:
    url: "{wattics}"
    username: {username}
    password: ${{WATTICS_PASSWORD}}
    retry_initial_secs: 0.05
    meters: {{pv-roof: {{id: stream-a}}}}
"""


async def test_locus_samples_reach_wattics_in_order_with_locus_timestamps(
    tmp_path: Path, fake_wattics: FakeWattics
) -> None:
    now_ms = int(time.time() * 1000)
    seeded = now_ms - now_ms % STEP_MS - 2 * 3_600_000
    with Store(tmp_path / DB_FILE) as store:  # what the gateway had before it went down
        store.append([Sample("pv-roof", seeded, {"energy_active_import": 1_000_000.0})])
    health = Health()
    async with make_fake() as locus:
        text = CONFIG.format(
            zone=ZONE,
            data_dir=tmp_path,
            source=locus_yaml(locus.url, "      pv-roof: {component_id: 54369}\n"),
            wattics=fake_wattics.url,
            username=USERNAME,
        )
        config = parse_config(text, "site.yaml", {**SECRETS, "WATTICS_PASSWORD": PASSWORD})
        daemon = Daemon(config, health=health)
        task = asyncio.get_running_loop().create_task(daemon.run(), name="daemon")
        try:
            await fake_wattics.wait_accepted(25, timeout=10)
        finally:
            daemon.stop()
            async with asyncio.timeout(10):
                await task
    packets = fake_wattics.delivered("stream-a")
    assert not fake_wattics.all_discarded() and not fake_wattics.rejected
    counter = 1_000_000.0
    powered = 0
    for n, packet in enumerate(packets[:25]):
        interval_start = seeded + (n - 1) * STEP_MS  # Locus' leading timestamp
        if n:
            counter += energy_wh(1, interval_start // 60_000, interval_start // 60_000 + 5)
        # Locus' W_avg is a total: "one total value" goes to the first parameter, aP_1.
        power = packet.pop("aP_1", None)
        assert power is None or (isinstance(power, float) and power >= 0)
        powered += power is not None
        assert packet == {
            "id": "stream-a",
            "tsISO8601": local_iso8601_ms(interval_start + STEP_MS, ZONE),
            "pC_1": counter,
        }
    assert powered >= 20  # Locus' W_avg reaches Wattics (it was dropped before)
    assert health.meter("pv-roof").state is MeterState.OK
    assert len(locus.data_requests("5min")) == 1
