"""A corrupt database file at start is moved aside with an alert; the gateway starts afresh."""

from __future__ import annotations

from pathlib import Path

from core.sample import Sample
from gateway.store.database import Store
from gateway.store.recovery import open_store_checked

T0 = 1_767_225_600_000


def test_garbage_file_is_moved_aside_and_a_fresh_store_opens(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    path.write_bytes(b"this is not a database, an SD card ate it" * 100)
    store, moved = open_store_checked(path, budget_bytes=None)
    with store:
        assert store.append([Sample("m", T0, {"power_active": 1.0})]) == [1]
    assert moved is not None and moved.exists()
    assert moved.read_bytes().startswith(b"this is not a database")


def test_damaged_pages_fail_the_check_and_are_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    with Store(path) as store:
        store.append([Sample("m", T0 + i, {"power_active": float(i)}) for i in range(5000)])
    data = bytearray(path.read_bytes())
    for offset in range(8192, len(data) - 4096, 4096):  # scribble over page bodies
        data[offset + 100 : offset + 400] = b"\xff" * 300
    path.write_bytes(bytes(data))
    store, moved = open_store_checked(path, budget_bytes=None)
    with store:
        assert store.count() == 0
    assert moved is not None


def test_healthy_store_is_opened_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    with Store(path) as store:
        store.append([Sample("m", T0, {"power_active": 1.0})])
    store, moved = open_store_checked(path, budget_bytes=None)
    with store:
        assert moved is None and store.count() == 1
