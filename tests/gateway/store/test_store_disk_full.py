"""A really full disk and the disk budget (issue 16 item 2), on real SQLite files.

- SQLite's "database or disk is full" is StoreFull, like the budget's: the sample is refused,
  nothing is half-written, the store's reserve is released so cursors and retention still
  write, and samples are accepted again once room is back (a real tmpfs, filled to the brim;
  skipped where the box cannot mount one).
- The budget counts the WAL file: it can be far bigger than the database between
  checkpoints (seen: 2 MB beside 4 KB), and a checkpoint that gives room back is tried
  before refusing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from core.sample import Sample
from gateway.store.database import Store, StoreFull
from gateway.store.reader import StoreReader
from tests.fixtures.tmpfs import Tmpfs

T0 = 1_767_225_600_000
VALUES = {"power_active": 1234.5, "energy_active_import": 98765.4321, "voltage_l1": 231.2}


@pytest.mark.timeout(30)
def test_sqlite_disk_full_is_store_full_and_the_store_resumes_when_room_is_back(
    tmpfs: Callable[[int], Tmpfs],
) -> None:
    disk = tmpfs(4 * 1024 * 1024)
    with Store(disk.path / "gateway.sqlite3") as store:
        store.register_stream("up", "s", "m")
        ts = T0
        for _ in range(20):
            ts += 1000
            store.append([Sample("m", ts, VALUES)])
        filler = disk.fill()
        with pytest.raises(StoreFull, match="disk is full"):  # not an OperationalError
            for _ in range(2000):
                ts += 1000
                store.append([Sample("m", ts, VALUES)])
        assert store.full and store.disk_full
        stored = store.count()
        # The uplink still drains: its cursor moves, retention deletes (the reserve's room).
        newest = store.read("m", 0, limit=10_000)[-1].rowid
        store.advance("up", "s", newest)
        assert store.prune(T0 + 10**9, 0) == stored
        with pytest.raises(StoreFull):  # still refused: the filesystem has no room yet
            store.append([Sample("m", ts + 1000, VALUES)])
        filler.unlink()  # room comes back
        assert store.append([Sample("m", ts + 2000, VALUES)]) != [None]
        assert not store.full and not store.disk_full


def test_the_budget_counts_the_wal_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    with Store(path) as store:
        for i in range(150):  # one commit each: the WAL grows, the database hardly
            store.append([Sample("m", T0 + i * 1000, VALUES)])
        wal = Path(f"{path}-wal").stat().st_size
        assert wal > 100 * 1024
        assert store.used_bytes() >= wal
        with StoreReader(path) as reader:
            assert reader.used_bytes() >= wal  # the status figures agree with the budget


def test_a_checkpoint_is_tried_before_refusing_for_a_big_wal(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    with Store(path, budget_bytes=256 * 1024) as store:
        for i in range(150):  # the WAL outgrows the budget; the samples need a few pages
            store.append([Sample("m", T0 + i * 1000, VALUES)])
        assert not store.full
        assert store.count() == 150
        assert store.used_bytes() < 256 * 1024
