"""Opening a HEALTHY store that is only out of reach must never move it aside as "corrupt"
(issue 16 item 1): locked by another process -> wait and retry, saying so; an I/O error or a
read-only filesystem -> StoreUnavailable (the daemon exits EXIT_STORE), the file untouched.

Real SQLite files on real filesystems: the lock is held by another process; the open fault is
SQLite's own (`-wal` is a directory it cannot use: SQLITE_CANTOPEN); the read-only
filesystem is a tmpfs remounted `ro` (tests.fixtures.tmpfs, skipped without root).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from core.sample import Sample
from gateway.store import database, recovery
from gateway.store.database import Store
from gateway.store.files import StoreUnavailable
from gateway.store.recovery import open_store_checked
from tests.fixtures.tmpfs import Tmpfs
from tests.helpers.eventually import eventually_sync

T0 = 1_767_225_600_000
ROWS = 50

#: Holds a write lock on the database (argv[1]) until its stdin closes.
_HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
db.execute("COMMIT")
"""


def _seeded(path: Path) -> bytes:
    with Store(path) as store:
        store.append([Sample("m", T0 + i, {"power_active": float(i)}) for i in range(ROWS)])
    return path.read_bytes()


def _nothing_moved(directory: Path) -> bool:
    return not any(".corrupt-" in p.name for p in directory.iterdir())


@pytest.mark.timeout(30)
def test_a_store_locked_by_another_process_is_waited_for_not_moved_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 200, raising=False)
    monkeypatch.setattr(recovery, "LOCK_RETRY_S", 0.1, raising=False)
    caplog.set_level(logging.WARNING)
    path = tmp_path / "gateway.sqlite3"
    _seeded(path)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    result: list[tuple[Store, Path | None]] = []
    opener = threading.Thread(
        target=lambda: result.append(open_store_checked(path, budget_bytes=None))
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        opener.start()
        try:  # the operator is told why the gateway waits (before the lock goes away)
            eventually_sync(
                lambda: "locked by another process" in caplog.text,
                timeout=8,
                interval=0.05,
                what="a log line saying the store is locked",
            )
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=10)
            opener.join(timeout=15)
    finally:
        if holder.poll() is None:
            holder.kill()
    store, moved = result[0]
    with store:
        assert moved is None
        assert store.count() == ROWS  # the undelivered samples are still there
    assert _nothing_moved(tmp_path)
    assert "retrying" in caplog.text


def test_a_store_sqlite_cannot_open_stops_with_store_unavailable_and_keeps_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.sqlite3"
    before = _seeded(path)
    Path(f"{path}-wal").mkdir()  # SQLite cannot use its WAL: SQLITE_CANTOPEN (an I/O fault)
    with pytest.raises(StoreUnavailable, match="unable to open database file") as raised:
        open_store_checked(path, budget_bytes=None)
    assert "NOT corrupt" in str(raised.value)
    assert path.read_bytes() == before
    assert _nothing_moved(tmp_path)


@pytest.mark.timeout(30)
def test_a_read_only_filesystem_stops_with_store_unavailable_and_keeps_the_file(
    tmpfs: Callable[[int], Tmpfs],
) -> None:
    disk = tmpfs(4 * 1024 * 1024)
    path = disk.path / "gateway.sqlite3"
    before = _seeded(path)
    disk.remount(read_only=True)
    with pytest.raises(StoreUnavailable, match="cannot be opened") as raised:
        open_store_checked(path, budget_bytes=None)
    assert "read" in str(raised.value).lower()  # readonly / unable to open: the reason shown
    assert path.read_bytes() == before
    assert _nothing_moved(disk.path)


def test_real_corruption_is_still_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    path.write_bytes(b"not a database at all " * 200)
    store, moved = open_store_checked(path, budget_bytes=None)
    with store:
        assert moved is not None and moved.exists()
