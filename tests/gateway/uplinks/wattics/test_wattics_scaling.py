"""Cost linear in meters (issue 19 #1): an append wakes only the streams of that meter, and a
caught-up stream asks the store nothing while nothing new is stored. Counted on the real
store's calls (the uplink runs against a real SQLite store and the strict fake)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from core.health import Health
from gateway.store.async_store import AsyncStore
from gateway.uplinks.wattics.uplink import WatticsUplink
from tests.fakes.wattics import FakeWattics
from tests.gateway.uplinks.wattics.test_wattics_datapoints import MIN, electricity, utc_ms
from tests.gateway.uplinks.wattics.test_wattics_uplink import append, make_config, running

pytestmark = pytest.mark.timeout(30)

START = utc_ms("2024-06-01T10:00:00")
METERS = [f"m{i}" for i in range(8)]


def count_calls(astore: AsyncStore, names: list[str]) -> Counter[tuple[str, str]]:
    """Wrap the Store's methods `names`: (method, meter or '-') -> calls."""
    calls: Counter[tuple[str, str]] = Counter()
    for name in names:
        original: Callable[..., Any] = getattr(astore.store, name)

        def wrapped(*args: Any, _name: str = name, _fn: Any = original, **kw: Any) -> Any:
            meter = args[0] if _name == "read" else "-"
            calls[(_name, str(meter))] += 1
            return _fn(*args, **kw)

        setattr(astore.store, name, wrapped)
    return calls


async def test_an_append_wakes_only_its_meters_stream_and_idle_streams_query_nothing(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    """Eight datapoints, caught up; then only m0 reads, ten samples one at a time. The other
    seven streams make no store query at all, and m0's stream makes a bounded number per
    sample (one read, no re-queue look-up): today every append woke every stream and each
    queried the store twice or more (2·N² a second on a 1 s site)."""
    for m in METERS:
        fake_wattics.register(f"stream-{m}", "electricity")
    await append(astore, [electricity(m, START, 0) for m in METERS])
    config = make_config(fake_wattics, {m: f"stream-{m}" for m in METERS}, commit_every_secs=60)
    up = WatticsUplink(config, store=astore, health=Health(), timezone="UTC")
    async with running(up):
        await fake_wattics.wait_accepted(len(METERS))
        await asyncio.sleep(0.2)  # every stream idle, caught up
        calls = count_calls(astore, ["read", "requeued_letters", "read_all", "cursor"])
        for i in range(1, 11):
            await append(astore, [electricity("m0", START + i * MIN, i)])
            await fake_wattics.wait_accepted(len(METERS) + i)
        await asyncio.sleep(0.2)
    others = {key: n for key, n in calls.items() if key[0] == "read" and key[1] != "m0"}
    assert others == {}, f"streams of other meters queried the store: {others}"
    assert calls[("requeued_letters", "-")] == 0
    assert calls[("read", "m0")] <= 10, calls  # one read per sample at most


async def test_a_requeue_by_another_process_is_still_seen_on_the_next_wake(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    """The re-queue look-up is skipped while nothing can have been re-queued, but a write by
    another connection (the `deadletters --requeue` CLI) makes the stream look again."""
    fake_wattics.register("stream-m0", "electricity")
    ids = await append(astore, [electricity("m0", START + i * MIN, i) for i in range(2)])
    await astore.register_stream("wattics", "stream-m0", "m0")
    await astore.park(
        "wattics",
        "stream-m0",
        ids[0],
        payload='{"id":"stream-m0","tsISO8601":"2024-06-01T10:00:00.000+00:00","aP_1":0}',
        status=400,
        body="",
        attempts=1,
        now_ms=0,
    )
    config = make_config(fake_wattics, {"m0": "stream-m0"})
    up = WatticsUplink(config, store=astore, health=Health(), timezone="UTC")
    async with running(up):
        await fake_wattics.wait_accepted(1)  # the sample after the parked one
        from gateway.store.database import Store

        with Store(astore.store.path) as other:  # another connection, as the CLI's
            other.requeue("wattics", now_ms=1)
        await append(astore, [electricity("m0", START + 5 * MIN, 5)])
        await fake_wattics.wait_accepted(2)
    # Wattics discards a packet older than its last: the uplink re-parks it (it looked).
    assert [p["aP_1"] for p in fake_wattics.delivered("stream-m0")] == [1, 5]
    assert len(await astore.dead_letters("wattics")) == 1


async def test_the_backlog_shows_undelivered_samples_not_uncommitted_ones(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    """Wattics commits its cursors in groups (here every 60 s): samples it delivered since
    are not waiting, so `backlog_rows` is 0 and no oldest undelivered sample is shown while
    the stored cursor still lags (issue 19 #4: ~500 rows, ~10 s shown when the lag was 0.2 s)."""
    from gateway.ops.figures import StoreFigures, acknowledged_positions

    fake_wattics.register("stream-m0", "electricity")
    health = Health()
    config = make_config(fake_wattics, {"m0": "stream-m0"}, commit_every_secs=60)
    up = WatticsUplink(config, store=astore, health=health, timezone="UTC")
    figures = StoreFigures(
        astore.store.path, {"wattics": up.streams()}, None, acknowledged_positions([up])
    )
    async with running(up):
        await append(astore, [electricity("m0", START + i * MIN, i) for i in range(5)])
        await fake_wattics.wait_accepted(5)
        assert await astore.cursor("wattics", "stream-m0") < 5  # not committed yet
        measuring = asyncio.create_task(figures.measure_forever(health, every_secs=0.05))
        try:
            state = health.uplink("wattics")
            for _ in range(100):
                await asyncio.sleep(0.02)
                if state.backlog_rows is not None:
                    break
            assert state.backlog_rows == 0 and state.oldest_undelivered_ts_ms is None
            await append(astore, [electricity("m0", START + 9 * MIN, 9)])  # one sent now
            await fake_wattics.wait_accepted(6)
        finally:
            measuring.cancel()
            await asyncio.gather(measuring, return_exceptions=True)
