"""The status page and /metrics never slow the data path: while another process hammers them,
every meter is read on every boundary and the uplink keeps delivering in order."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from core.health import Health
from drivers.simulator import SimulatedMeter
from gateway.daemon import DB_FILE
from gateway.store.reader import StoreReader
from tests.fakes.wattics import FakeWattics
from tests.gateway.ops.status_site import PASSWORD, STREAM, USER, status_config, status_site
from tests.helpers.eventually import eventually
from tests.paths import REPO

INTERVAL_MS = 500
HAMMER_S = 8.0


@pytest.fixture
async def wattics() -> Any:
    async with FakeWattics(USER, PASSWORD, {STREAM}) as fake:
        yield fake


def stored_stamps(db: Path) -> list[int]:
    """The stored sample times, read-only (a small store: read on the loop's thread)."""
    with StoreReader(db) as reader:
        rows = reader.query("SELECT ts_ms FROM samples WHERE meter = 'incomer' ORDER BY id")
    return [int(row[0]) for row in rows]


def sent_stamps(wattics: FakeWattics) -> list[int]:
    return [
        round(datetime.fromisoformat(str(p["tsISO8601"])).timestamp() * 1000)
        for p in wattics.delivered(STREAM)
    ]


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_polling_and_delivery_keep_their_schedule_while_the_page_is_hammered(
    tmp_path: Path, sdm630_server: tuple[int, SimulatedMeter], wattics: FakeWattics
) -> None:
    health = Health()
    config = status_config(tmp_path, sdm630_server[0], wattics, interval=f"{INTERVAL_MS}ms")
    db = tmp_path / DB_FILE
    # the daemon's own figures cadence: the load on the store is what it is on a site
    async with status_site(config, health, measure_every_s=None) as (_, url):
        await wattics.wait_accepted(2, timeout=10)
        before = stored_stamps(db)
        hammer = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "tests.gateway.ops.hammer", url, str(HAMMER_S), "8"),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
        )
        lags: list[int] = []
        try:
            while hammer.returncode is None:
                stored = len(stored_stamps(db))
                lags.append(stored - len(wattics.delivered(STREAM)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(hammer.wait()), 0.5)
            out, _ = await hammer.communicate()
        finally:
            if hammer.returncode is None:
                hammer.kill()
                await hammer.wait()
        assert hammer.returncode == 0
        requests = int(out.decode())
        after = stored_stamps(db)
        # Delivery catches up at once once the hammering stops (it never fell behind far).
        await eventually(
            lambda: len(wattics.delivered(STREAM)) >= len(after), timeout=5, what="delivery"
        )
    assert requests >= 100, f"the client made only {requests} requests"
    during = [ts for ts in after if ts > before[-1]]
    assert len(during) >= HAMMER_S * 1000 / INTERVAL_MS - 2
    steps = {b - a for a, b in itertools.pairwise(during)}
    assert steps == {INTERVAL_MS}, f"a boundary was missed while hammered: {sorted(steps)}"
    assert health.meter("incomer").skipped_ticks == 0
    assert max(lags) <= 6, f"delivery fell behind while hammered: {lags}"
    sent = sent_stamps(wattics)
    assert sent == after[: len(sent)]  # every sample, in order, none twice
    assert wattics.rejected == [] and wattics.all_discarded() == []
