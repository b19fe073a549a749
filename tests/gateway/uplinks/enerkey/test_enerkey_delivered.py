"""EnerKey's delivered-hours table: written with the cursor, or not at all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.sample import Sample
from gateway.store.database import Store
from gateway.uplinks.enerkey.delivered import delivered_hours, record_delivery

H = 3_600_000
DAY = 24 * H


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "queue.db") as store:
        store.append(
            [Sample("m1", i * 60_000, {"energy_active_import": float(i)}) for i in range(5)]
        )
        store.register_stream("enerkey", "4711", "m1")
        yield store


def hours(store: Store, stream: str, kind: str, end_ms: int) -> list[tuple[int, float]]:
    return delivered_hours(store, "enerkey", stream, kind, start_ms=0, end_ms=end_ms)


def test_cursor_hours_and_state_move_together(store: Store) -> None:
    record_delivery(
        store, "enerkey", "4711", 3, kind="consumption", hours=[(H, 1.5), (2 * H, 2.5)],
        now_ms=10 * H, state={"stream:4711": "{}"},
    )  # fmt: skip
    assert store.cursor("enerkey", "4711") == 3
    assert hours(store, "4711", "consumption", 3 * H) == [(H, 1.5), (2 * H, 2.5)]
    assert hours(store, "4711", "cumulative", 3 * H) == []
    assert store.state("enerkey", "stream:4711") == "{}"


def test_nothing_is_recorded_when_the_cursor_cannot_move(store: Store) -> None:
    with pytest.raises(KeyError):
        record_delivery(
            store, "enerkey", "unregistered", 3, kind="consumption", hours=[(H, 1.0)],
            now_ms=H, state={"stream:unregistered": "{}"},
        )  # fmt: skip
    assert hours(store, "unregistered", "consumption", 9 * H) == []
    assert store.state("enerkey", "stream:unregistered") is None


def test_an_hour_recorded_again_keeps_one_row_and_old_deliveries_age_out(store: Store) -> None:
    record_delivery(store, "enerkey", "4711", 1, kind="cumulative", hours=[(H, 1.0)], now_ms=H)
    record_delivery(store, "enerkey", "4711", 2, kind="cumulative", hours=[(H, 1.25)], now_ms=2 * H)
    assert hours(store, "4711", "cumulative", 9 * H) == [(H, 1.25)]
    record_delivery(
        store, "enerkey", "4711", 3, kind="cumulative", hours=[(5 * H, 5.0)],
        now_ms=400 * DAY, keep_ms=30 * DAY,
    )  # fmt: skip
    assert hours(store, "4711", "cumulative", 9 * H) == [(5 * H, 5.0)]
    assert store.cursor("enerkey", "4711") == 3


def test_the_store_itself_knows_nothing_of_enerkey(tmp_path: Path) -> None:
    with Store(tmp_path / "fresh.db") as store:
        tables = {row[0] for row in store.query("SELECT name FROM sqlite_master")}
    assert "delivered_hours" not in tables
