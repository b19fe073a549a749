"""The PTS quota ledger (in the store's uplink state): the claim is the only way to spend quota."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.store.database import Store
from gateway.uplinks.pts import ledger

T0 = 1_770_000_000_000
DATE = "2026-02-01T00:00:00"


def claim(store: Store, value: float = 6100.0, date: str = DATE, **limits: int) -> Any:
    return ledger.claim(
        store,
        1000,
        "2026-01",
        origin="auto",
        meter_value=value,
        meter_date=date,
        sample_id=1,
        max_valid=limits.get("max_valid", 2),
        max_failed=limits.get("max_failed", 3),
        now_ms=T0,
        tolerance_kwh=0.1,
    )


def test_a_pending_submission_counts_on_both_sides_and_blocks_the_next(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with Store(path) as daemon, Store(path) as cli:  # two processes on one file
        first = claim(daemon)
        assert first.row_id == 1 and first.refusal is None
        second = claim(cli, 6101.0)
        assert second.row_id is None and "still pending" in (second.refusal or "")
        ledger.update(daemon, 1000, "2026-01", 1, status="failed", validation_notes="n", now_ms=T0)
        third = claim(cli, 6101.0)
        assert third.row_id == 2 and (third.passed, third.failed) == (0, 1)
        rows = ledger.submissions(daemon, 1000)
        assert [(r.id, r.status, r.meter_value) for r in rows] == [
            (1, "failed", 6100.0),
            (2, "sending", 6101.0),
        ]
        assert rows[0].validation_notes == "n" and ledger.submissions(daemon, 2000) == []


def test_limits_reading_that_passed_and_overrides(tmp_path: Path) -> None:
    with Store(tmp_path / "q.db") as store:
        for row_id, status in ((1, "passed"), (2, "failed")):
            assert claim(store, 6000.0 + row_id).row_id == row_id
            ledger.update(store, 1000, "2026-01", row_id, status=status, now_ms=T0)
        again = claim(store, 6001.0)
        assert "already passed" in (again.refusal or "")
        assert "failed quota used: 1 of 1" in (claim(store, 6003.0, max_failed=1).refusal or "")
        assert "valid quota used: 1 of 1" in (claim(store, 6003.0, max_valid=1).refusal or "")
        ledger.record_override(
            store, 1000, "2026-01", max_valid=3, max_failed=4, reason="ticket 9", now_ms=T0
        )
        assert ledger.limits(store, 1000, "2026-01", 2, 3) == (3, 4, "ticket 9")
        assert ledger.limits(store, 1000, "2026-02", 2, 3) == (2, 3, None)
        raised = claim(store, 6003.0, max_valid=1, max_failed=1)
        assert raised.row_id == 3 and (raised.max_valid, raised.max_failed) == (3, 4)


def test_test_rows_never_count_unless_tests_count(tmp_path: Path) -> None:
    with Store(tmp_path / "q.db") as store:
        for _ in range(5):
            ledger.record(
                store,
                1000,
                "2026-01",
                ledger.NewEntry(
                    test=True,
                    origin="auto",
                    meter_value=6100.0,
                    meter_date=DATE,
                    sample_id=1,
                    status="failed",
                ),
                now_ms=T0,
            )
        result = claim(store, max_failed=1)
        assert result.row_id == 6 and (result.passed, result.failed, result.pending) == (0, 0, 0)
