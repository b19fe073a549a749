"""Catching up after a long outage in tests MTS accepts (issue 14 #15).

The document leaves "the maximum number of survey days requested per test" "to be decided".
Before, after ten days of downtime the gateway asked for all ten days in one test; a 400 was
held and the same request sent again the next day, for ever. Now a catch-up goes in chunks
(`catchup_chunk_days`), a refused chunk is halved at once, the next chunk follows at once,
and a refused one-day test is alerted. The fake here accepts at most 3 days per test.
"""

from __future__ import annotations

import time
from pathlib import Path

from core.health import Health
from core.sample import Sample
from tests.fakes.mts import FakeMeter, FakeMts
from tests.fixtures.mts import METER_PASSWORD, REMOTE_ADDRESS, SERIAL, TOKEN
from tests.gateway.sources.mts.mts_helpers import METER, opened_store, running, section
from tests.helpers.eventually import eventually

DAY_MS = 86_400_000
PERIOD_MS = 1_800_000


def _midnight_ms(days_ago: int) -> int:
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    return today - days_ago * DAY_MS


async def test_a_ten_day_outage_is_caught_up_in_chunks_mts_accepts(tmp_path: Path) -> None:
    async with FakeMts(TOKEN, max_survey_days=3) as fake:
        fake.add_meter(FakeMeter(REMOTE_ADDRESS, serial=SERIAL, password=METER_PASSWORD))
        health = Health()
        async with opened_store(tmp_path) as astore:
            # The newest stored period: ten days ago (the gateway was down since).
            last = _midnight_ms(10)
            await astore.append([Sample(METER, last, {"energy_active_import": 1.0})])
            async with running(section(fake, catchup_chunk_days=7), astore, health):
                yesterday_end = _midnight_ms(0) - PERIOD_MS
                await eventually(
                    lambda: (astore.store.last_ts(METER) or 0) >= yesterday_end,
                    timeout=10,
                    what="the outage filled",
                )
            stamps = [row.sample.ts_ms for row in astore.store.read(METER, 0, 10_000)]
        asked = [(p.get("surveyDate"), p["surveyDays"]) for p in fake.requested()]

    # Every half hour since the outage began, once and in order.
    expected = list(range(last, yesterday_end + 1, PERIOD_MS))
    assert [ts for ts in stamps if last <= ts <= yesterday_end] == expected
    # The refused 7-day chunk (MTS takes 3) is not among the tests MTS made: halved to 3 at
    # once, from the same day; the chunks then follow each other without waiting for a slot.
    refused = [r for r in fake.refused if r[0] == "test-request"]
    assert len(refused) == 1  # shrinking found a size MTS takes; it was not asked again
    assert all(days == 3 for _, days in asked[:-1]) and 1 <= asked[-1][1] <= 3
    starts = [day for day, _ in asked]
    assert starts == sorted(starts) and len(asked) == 4  # 11 days in 3-day chunks
    assert not [a for a in health.alerts if "refused" in a.message]


async def test_one_refused_survey_day_is_alerted(tmp_path: Path) -> None:
    async with FakeMts(TOKEN, max_survey_days=0) as fake:
        fake.add_meter(FakeMeter(REMOTE_ADDRESS, serial=SERIAL, password=METER_PASSWORD))
        health = Health()
        async with opened_store(tmp_path) as astore:
            await astore.append([Sample(METER, _midnight_ms(5), {"energy_active_import": 1.0})])
            async with running(section(fake, catchup_chunk_days=4), astore, health):
                await eventually(
                    lambda: any("even one survey day" in a.message for a in health.alerts),
                    what="the alert",
                )
        refused = [r for r in fake.refused if r[0] == "test-request"]
    assert len(refused) == 3  # 4 days, 2, then 1: nothing left to shrink
    assert fake.requested() == []
