"""A stored row whose payload no longer decodes (bit rot that `quick_check` does not see) is
moved to quarantine, counted and reported; the rows around it are read as ever (issue 16
item 3). The damage is written into a real SQLite file by another connection, as an SD card's
flipped bits would be."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from core.sample import Sample
from gateway.store.database import Store

T0 = 1_767_225_600_000
VALUES = {"power_active": 1.5, "energy_active_import": 12.25}


def _store_with_damage(path: Path, damaged: dict[int, str]) -> None:
    with Store(path) as store:
        store.append([Sample("m", T0 + i * 1000, VALUES) for i in range(10)])
    with sqlite3.connect(path) as db:
        for sample_id, vals in damaged.items():
            db.execute("UPDATE samples SET vals = ? WHERE id = ?", (vals, sample_id))
        assert db.execute("PRAGMA quick_check").fetchone() == ("ok",)
    db.close()


@pytest.mark.parametrize("garbage", ['{"power_active": 1.5, "ener\x01', "[1, 2]", "\xff\xfe"])
def test_a_row_that_no_longer_decodes_is_quarantined_and_reading_goes_on(
    tmp_path: Path, garbage: str
) -> None:
    path = tmp_path / "gateway.sqlite3"
    _store_with_damage(path, {4: garbage})
    told: list[str] = []
    with Store(path) as store:
        store.on_quarantine = told.append
        rows = store.read("m", 0, limit=100)
        assert [r.rowid for r in rows] == [1, 2, 3, 5, 6, 7, 8, 9, 10]
        assert store.read("m", 0, limit=100) == rows  # gone from samples, not found again
        assert store.read_all(0) == rows
        assert store.count() == 9
        (kept,) = store.query("SELECT sample_id, meter, CAST(vals AS TEXT) FROM quarantine")
    assert kept == (4, "m", garbage)  # the raw bytes, kept as evidence
    assert len(told) == 1 and "sample 4 of meter m" in told[0] and "quarantine" in told[0]


def test_find_sample_over_a_malformed_row_quarantines_it_and_answers(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    _store_with_damage(path, {2: '{"power_active": 1.5, "ener\x01'})
    with Store(path) as store:
        found = store.find_sample("m", T0, T0 + 9000, channel="power_active", last=True)
        assert found is not None and found.rowid == 10
        first = store.find_sample("m", T0 + 1000, T0 + 9000, channel="power_active")
        assert first is not None and first.rowid == 3
        assert store.query("SELECT sample_id FROM quarantine") == [(2,)]
