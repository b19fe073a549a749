"""The store's -wal and -shm deleted while it runs (issue 16 item 4): the health pass notices
(inode check), checkpoints through the connection that still holds the deleted files, and
reopens, so that what a crash would leave on disk (the database file and whatever -wal has a
name) holds every sample. Real SQLite files; the "crash" is a copy of the files on disk, which
is all that kill -9 or a power cut leaves."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from core.sample import Sample
from gateway.store.database import Store
from gateway.store.files import StoreUnavailable

T0 = 1_767_225_600_000
VALUES = {"power_active": 1.5}


def _what_a_crash_leaves(path: Path, into: Path) -> int:
    """Copy the store's files as they are on disk now; samples in that copy (-1: no table)."""
    into.mkdir()
    for suffix in ("", "-wal"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            shutil.copyfile(source, into / f"{path.name}{suffix}")
    db = sqlite3.connect(into / path.name)
    try:
        return int(db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
    except sqlite3.OperationalError:  # no such table: everything was in the deleted -wal
        return -1
    finally:
        db.close()


def test_a_deleted_wal_is_checkpointed_and_the_store_reopened(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    with Store(path) as store:
        assert store.check_files() is None  # all well: nothing done
        store.append([Sample("m", T0 + i * 1000, VALUES) for i in range(100)])
        Path(f"{path}-wal").unlink()  # an operator clears "junk"
        Path(f"{path}-shm").unlink()
        problem = store.check_files()
        assert problem is not None and "deleted while it ran" in problem
        assert _what_a_crash_leaves(path, tmp_path / "right-after") == 100
        store.append([Sample("m", T0 + 200_000 + i, VALUES) for i in range(5)])
        assert store.check_files() is None  # the new files are the ones watched now
        assert _what_a_crash_leaves(path, tmp_path / "after-crash") == 105
        assert store.count() == 105


def test_a_deleted_database_file_is_copied_back_from_the_open_connection(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    with Store(path) as store:
        store.append([Sample("m", T0 + i * 1000, VALUES) for i in range(50)])
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # most of it in the main file
        store.append([Sample("m", T0 + 100_000 + i, VALUES) for i in range(5)])
        path.unlink()  # the database itself
        problem = store.check_files()
        assert problem is not None and "database" in problem
        assert _what_a_crash_leaves(path, tmp_path / "after-crash") == 55
        store.append([Sample("m", T0 + 200_000, VALUES)])
        assert store.count() == 56


def test_a_database_file_replaced_while_running_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    with Store(path) as store:
        store.append([Sample("m", T0 + i * 1000, VALUES) for i in range(20)])
        path.unlink()
        path.write_bytes(b"someone else's file")
        with pytest.raises(StoreUnavailable, match="replaced while running"):
            store.check_files()
    assert path.read_bytes() == b"someone else's file"
    (rescued,) = tmp_path.glob("gateway.sqlite3.rescued-*")
    assert _what_a_crash_leaves(rescued, tmp_path / "rescued") == 20
