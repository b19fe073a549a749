"""The store's delivered-hours ledger: written with the cursor, or not at all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.sample import Sample
from gateway.store.database import Store

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


def test_cursor_hours_and_state_move_together(store: Store) -> None:
    store.record_delivery(
        "enerkey", "4711", 3, kind="consumption", hours=[(H, 1.5), (2 * H, 2.5)],
        now_ms=10 * H, state={"stream:4711": "{}"},
    )  # fmt: skip
    assert store.cursor("enerkey", "4711") == 3
    assert store.delivered_hours("enerkey", "4711", "consumption", 0, 3 * H) == [
        (H, 1.5),
        (2 * H, 2.5),
    ]
    assert store.delivered_hours("enerkey", "4711", "cumulative", 0, 3 * H) == []
    assert store.state("enerkey", "stream:4711") == "{}"


def test_nothing_is_recorded_when_the_cursor_cannot_move(store: Store) -> None:
    with pytest.raises(KeyError):
        store.record_delivery(
            "enerkey", "unregistered", 3, kind="consumption", hours=[(H, 1.0)], now_ms=H,
            state={"stream:unregistered": "{}"},
        )  # fmt: skip
    assert store.delivered_hours("enerkey", "unregistered", "consumption", 0, 9 * H) == []
    assert store.state("enerkey", "stream:unregistered") is None


def test_an_hour_recorded_again_keeps_one_row_and_old_deliveries_age_out(store: Store) -> None:
    store.record_delivery("enerkey", "4711", 1, kind="cumulative", hours=[(H, 1.0)], now_ms=H)
    store.record_delivery("enerkey", "4711", 2, kind="cumulative", hours=[(H, 1.25)], now_ms=2 * H)
    assert store.delivered_hours("enerkey", "4711", "cumulative", 0, 9 * H) == [(H, 1.25)]
    store.record_delivery(
        "enerkey", "4711", 3, kind="cumulative", hours=[(5 * H, 5.0)], now_ms=400 * DAY,
        keep_ms=30 * DAY,
    )  # fmt: skip
    assert store.delivered_hours("enerkey", "4711", "cumulative", 0, 9 * H) == [(5 * H, 5.0)]
    assert store.cursor("enerkey", "4711") == 3


def test_parking_can_carry_the_uplinks_state(store: Store) -> None:
    store.park(
        "enerkey", "4711", 4, payload="{}", status=400, body="bad", attempts=3, now_ms=H,
        state={"stream:4711": '{"next_hour_ms": 7200000}'},
    )  # fmt: skip
    assert store.cursor("enerkey", "4711") == 4
    assert store.state("enerkey", "stream:4711") == '{"next_hour_ms": 7200000}'
    assert len(store.dead_letters("enerkey")) == 1
