"""The read-only store view `status` and the daemon's figures use: it reads while the writer
writes, never holds the writer up, and leaves no file behind."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from core.sample import Sample
from gateway.store.database import Store
from gateway.store.reader import StoreMissing, StoreReader


def _samples(meter: str, start: int, count: int) -> list[Sample]:
    return [Sample(meter, start + i * 1000, {"power_active": float(i)}) for i in range(count)]


def test_a_missing_store_is_said_so_and_not_created(tmp_path: Path) -> None:
    with pytest.raises(StoreMissing):
        StoreReader(tmp_path / "none.sqlite3")
    assert list(tmp_path.iterdir()) == []


def test_figures_of_a_running_store(tmp_path: Path) -> None:
    with Store(tmp_path / "g.sqlite3") as store:
        store.register_stream("wattics", "s-a", "a")
        ids = store.append(_samples("a", 1000, 5) + _samples("b", 1000, 2))
        store.advance("wattics", "s-a", ids[1] or 0)
        store.park(
            "wattics", "s-a", ids[2] or 0, payload="{}", status=400, body="", attempts=3, now_ms=1
        )
        with StoreReader(store.path) as reader, reader.snapshot():
            assert reader.writer_running
            assert reader.newest_samples() == {"a": 5000, "b": 2000}
            (cursor,) = reader.cursors()
            assert (cursor.uplink, cursor.stream, cursor.meter) == ("wattics", "s-a", "a")
            backlog = reader.backlog("a", cursor.position)
            assert (backlog.rows, backlog.oldest_ts_ms) == (2, 4000)
            assert reader.passed("a", 0, cursor.position) == 3
            assert reader.dead_letters() == {("wattics", "s-a"): 1}
            assert reader.used_bytes() == store.used_bytes()


def test_reading_a_stopped_store_leaves_no_wal_or_shm_file(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    with Store(path) as store:
        store.append(_samples("a", 1000, 3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.sqlite3", "g.sqlite3-reserve"]
    with StoreReader(path) as reader:
        assert not reader.writer_running
        assert reader.newest_samples() == {"a": 3000}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.sqlite3", "g.sqlite3-reserve"]


def test_the_reader_cannot_write(tmp_path: Path) -> None:
    with (
        Store(tmp_path / "g.sqlite3") as store,
        StoreReader(store.path) as reader,
        pytest.raises(sqlite3.OperationalError),
    ):
        reader.query("DELETE FROM samples")


def test_a_long_read_does_not_hold_up_appends(tmp_path: Path) -> None:
    """WAL: a reader inside one long read transaction; the writer commits at its usual pace."""
    with Store(tmp_path / "g.sqlite3") as store:
        store.append(_samples("a", 1000, 20_000))
        reader = StoreReader(store.path)
        inside = threading.Event()
        release = threading.Event()

        def hold_a_snapshot() -> None:
            with reader.snapshot():
                reader.backlog("a", 0)
                inside.set()
                release.wait(5)

        holder = threading.Thread(target=hold_a_snapshot, name="reader-holds")
        holder.start()
        try:
            assert inside.wait(5)
            started = time.monotonic()
            for n in range(20):
                store.append(_samples("a", 30_000_000 + n * 1000, 1))
            assert time.monotonic() - started < 2.0
        finally:
            release.set()
            holder.join(5)
            reader.close()
        assert store.count("a") == 20_020
