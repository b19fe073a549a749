"""The store keeps every committed sample, per-meter order, and cursor semantics."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.sample import Sample
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store, StoreFull

T0 = 1_767_225_600_000


def sample(meter: str, ts_ms: int, energy: float = 1.0) -> Sample:
    return Sample(meter, ts_ms, {"energy_active_import": energy, "power_active": 2.5})


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "s.sqlite3") as opened:
        yield opened


def test_append_returns_ids_in_arrival_order_and_reads_back(store: Store) -> None:
    ids = store.append([sample("a", T0), sample("b", T0), sample("a", T0 + 1000)])
    assert ids == [1, 2, 3]
    back = store.read("a", 0)
    assert [s.rowid for s in back] == [1, 3]
    assert back[1].sample == sample("a", T0 + 1000)


def test_older_or_equal_sample_is_refused_and_counted(store: Store) -> None:
    store.append([sample("a", T0 + 5000)])
    ids = store.append([sample("a", T0 + 5000), sample("a", T0), sample("b", T0)])
    assert ids[:2] == [None, None] and ids[2] is not None
    assert store.refused_older == {"a": 2}


def test_order_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with Store(path) as first:
        first.append([sample("a", T0 + 5000)])
    with Store(path) as second:
        assert second.append([sample("a", T0)]) == [None]
        assert second.append([sample("a", T0 + 6000)]) == [2]


def test_ids_are_never_reused_after_everything_is_pruned(store: Store) -> None:
    store.register_stream("up", "s1", "a")
    store.append([sample("a", T0), sample("a", T0 + 1)])
    store.advance("up", "s1", 2)
    assert store.prune(now_ms=T0 + 10**9, retention_ms=0) == 2
    assert store.append([sample("a", T0 + 2)]) == [3]
    assert [s.rowid for s in store.read("a", store.cursor("up", "s1"))] == [3]


def test_cursor_never_moves_back_and_state_commits_with_it(store: Store) -> None:
    store.register_stream("up", "s1", "a")
    store.advance("up", "s1", 10, {"last": "x"})
    store.advance("up", "s1", 4, {"last": "y"})
    assert store.cursor("up", "s1") == 10
    assert store.state("up", "last") == "y"
    with pytest.raises(KeyError):
        store.advance("up", "unknown", 3)


def test_prune_keeps_undelivered_and_retained_samples(store: Store) -> None:
    store.register_stream("fast", "a", "a")
    store.register_stream("slow", "a", "a")
    store.append([sample("a", T0 + i * 1000) for i in range(10)])
    store.advance("fast", "a", 10)
    store.advance("slow", "a", 4)
    # Retention keeps the last 3 s even though delivered.
    deleted = store.prune(now_ms=T0 + 10_000, retention_ms=8_000)
    assert deleted == 2
    assert [s.rowid for s in store.read("a", 0)] == list(range(3, 11))
    deleted = store.prune(now_ms=T0 + 100_000, retention_ms=0)
    assert [s.rowid for s in store.read("a", 0)] == list(range(5, 11))


def test_meter_no_uplink_wants_is_kept_for_retention_only(store: Store) -> None:
    store.append([sample("local", T0), sample("local", T0 + 10_000)])
    assert store.prune(now_ms=T0 + 15_000, retention_ms=10_000) == 1


def test_disk_budget_refuses_new_samples_and_deletes_nothing(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite3", budget_bytes=64 * 1024) as store:
        store.register_stream("up", "a", "a")
        stored = 0
        with pytest.raises(StoreFull):
            for i in range(10_000):
                store.append([sample("a", T0 + i)])
                stored += 1
        assert store.full and store.count() == stored
        # Delivery and retention free space; then new samples are accepted again.
        store.advance("up", "a", stored)
        store.prune(now_ms=T0 + 10**9, retention_ms=0)
        assert store.append([sample("a", T0 + 10**6)]) != [None]
        assert not store.full


def test_dead_letter_parks_and_advances_in_one_step(store: Store) -> None:
    store.register_stream("up", "s", "a")
    (sid,) = store.append([sample("a", T0)])
    assert sid is not None
    store.park("up", "s", sid, payload="{}", status=400, body="bad" * 5000, attempts=3, now_ms=T0)
    assert store.cursor("up", "s") == sid
    (letter,) = store.dead_letters("up")
    assert letter.status == 400 and len(letter.body) == 4000 and letter.attempts == 3


def test_backlog_counts_rows_and_oldest(store: Store) -> None:
    store.register_stream("up", "s", "a")
    store.append([sample("a", T0 + i) for i in range(5)])
    store.advance("up", "s", 2)
    backlog = store.backlog("up", "s")
    assert (backlog.rows, backlog.oldest_ts_ms) == (3, T0 + 2)


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("append"),
            st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 50)), min_size=1, max_size=6),
        ),
        st.tuples(st.just("advance"), st.sampled_from("abc"), st.integers(0, 40)),
        st.tuples(st.just("prune"), st.integers(0, 60)),
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations)
def test_model_no_loss_order_and_cursors(
    tmp_path_factory: pytest.TempPathFactory, ops: list
) -> None:
    """Against a plain-Python model: nothing undelivered is ever lost, order holds per meter."""
    path = tmp_path_factory.mktemp("prop") / "s.sqlite3"
    with Store(path) as store:
        for meter in "abc":
            store.register_stream("up", meter, meter)
        model: dict[int, Sample] = {}
        last: dict[str, int] = {}
        cursors = dict.fromkeys("abc", 0)
        for op in ops:
            if op[0] == "append":
                batch = [sample(m, T0 + t * 1000) for m, t in op[1]]
                ids = store.append(batch)
                for item, sid in zip(batch, ids, strict=True):
                    newer = item.ts_ms > last.get(item.meter, -1)
                    assert (sid is not None) == newer
                    if sid is not None:
                        model[sid] = item
                        last[item.meter] = item.ts_ms
            elif op[0] == "advance":
                _, meter, position = op
                store.advance("up", meter, position)
                cursors[meter] = max(cursors[meter], position)
            else:
                now = T0 + op[1] * 1000
                store.prune(now_ms=now, retention_ms=5000)
                for sid, item in list(model.items()):
                    if sid <= cursors[item.meter] and item.ts_ms < now - 5000:
                        del model[sid]
        for meter in "abc":
            stored = store.read(meter, 0, limit=10_000)
            expected_undelivered = sorted(
                sid for sid, item in model.items() if item.meter == meter and sid > cursors[meter]
            )
            got_ids = [s.rowid for s in stored]
            assert set(expected_undelivered) <= set(got_ids)
            assert set(got_ids) <= set(model)
            times = [s.sample.ts_ms for s in stored]
            assert times == sorted(times) and len(set(times)) == len(times)
            assert all(model[s.rowid] == s.sample for s in stored)


async def test_async_store_group_commits_concurrent_appends(tmp_path: Path) -> None:
    import asyncio

    astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
    try:
        results = await asyncio.gather(*(astore.append([sample(f"m{i}", T0)]) for i in range(50)))
        assert sorted(r[0] for r in results) == list(range(1, 51))
        waiter = asyncio.create_task(astore.wait_appended(2.0))
        await asyncio.sleep(0)
        await astore.append([sample("m0", T0 + 1)])
        assert await waiter
        assert not await astore.wait_appended(0.01)
    finally:
        await astore.aclose()
        await astore.aclose()


async def test_async_store_wakes_per_meter_and_knows_what_is_new_without_a_query(
    tmp_path: Path,
) -> None:
    """A waiter for one meter is woken by that meter's append only; `has_after` answers from
    memory, also after reopening (the newest id per meter is loaded at open)."""
    import asyncio

    astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
    try:
        (first,) = await astore.append([sample("a", T0)])
        assert astore.has_after("a", 0) and not astore.has_after("a", first)
        assert not astore.has_after("b", 0)
        for_b = asyncio.create_task(astore.wait_appended(2.0, meter="b"))
        for_a = asyncio.create_task(astore.wait_appended(2.0, meter="a"))
        await astore.append([sample("a", T0 + 1)])
        assert await for_a
        assert not for_b.done()
        await astore.append([sample("b", T0)])
        assert await for_b
        assert astore.has_after("a", first)
    finally:
        await astore.aclose()
    reopened = AsyncStore(Store(tmp_path / "s.sqlite3"))
    try:
        assert reopened.has_after("a", first) and not reopened.has_after("a", first + 1)
        rows, position = await reopened.read_new("a", first + 1)
        assert rows == [] and position == first + 1
    finally:
        await reopened.aclose()
