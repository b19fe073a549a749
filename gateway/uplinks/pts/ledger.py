"""The PTS quota ledger: every submission of every system and reporting window, durable.

PTS allows a fixed number of valid and of failed submissions per system and window (and the
MassCEC help desk may set other limits: `record_override`). Invariants:
1. The ledger lives in the store's uplink state (namespace `pts`, keys
   `ledger:<fk_system>:<period>`, a JSON list, and `quota:<fk_system>:<period>`).
2. A submission's entry is added (status `sending`) in the SAME transaction that checks the
   quota (`claim`), committed before the request leaves; an entry whose outcome is unknown
   counts against both quotas until resolved. So no crash, restart or second process (the CLI
   next to the daemon) can spend quota unseen.
3. Statuses: sending, received, validating (PENDING: not final, count on both sides), passed,
   failed, superseded (arrived, then replaced by a later submission we did not make: counts as
   failed), refused (a per-system Error: not received, blocks automatic submission),
   not_received (also: ARPost answered 400 "Bad API Key", which pauses the uplink and costs
   nothing). Test rows (ARPostTest): passed, failed, unknown (the answer said nothing of the
   system). With `count_tests` (config count_failed_tests) a failed or unknown test row counts
   as a failed submission ("3 failed validation submissions per system": the conservative
   reading); otherwise test rows never count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Final

import orjson

from gateway.store.database import Store, Transaction
from gateway.store.dead_letters import MAX_BODY_CHARS
from gateway.uplinks.pts.rules import same_reading

#: PTS ledger rows whose outcome is not known yet (they count against both quotas).
PENDING: Final = ("sending", "received", "validating")
#: PTS ledger rows that count as a failed submission.
COUNTED_FAILED: Final = ("failed", "superseded")
#: After a row with one of these statuses nothing more is submitted automatically in its
#: window: a human decides.
NEEDS_HUMAN: Final = (*COUNTED_FAILED, "refused")
#: Test rows that count as a failed submission when tests count (`count_tests`).
TEST_COUNTED_FAILED: Final = ("failed", "unknown")
#: The uplink_state namespace of the ledger.
NAMESPACE: Final = "pts"


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEntry:
    """What a new ledger entry says (its id and times are the ledger's)."""

    test: bool
    origin: str
    meter_value: float
    meter_date: str
    sample_id: int | None
    status: str
    http_status: int | None = None
    validation_notes: str | None = None
    detail: str | None = None

    def row(self, row_id: int, now_ms: int) -> dict[str, Any]:
        detail = None if self.detail is None else self.detail[:MAX_BODY_CHARS]
        return {
            "id": row_id,
            **{item.name: getattr(self, item.name) for item in fields(NewEntry)},
            "detail": detail,
            "created_ms": now_ms,
            "updated_ms": now_ms,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PtsSubmission(NewEntry):
    """One row of the PTS quota ledger (the module docstring explains the statuses)."""

    id: int
    fk_system: int
    period: str
    created_ms: int
    updated_ms: int


@dataclass(frozen=True, slots=True)
class Quota:
    """A system's quota in one window: what its counted (non-test) rows used, and the limits."""

    passed: int
    failed: int
    pending: int
    max_valid: int
    max_failed: int

    @classmethod
    def count(cls, statuses: Iterable[str], max_valid: int, max_failed: int) -> Quota:
        """The quota used by counted rows with these statuses (test rows never count)."""
        statuses = list(statuses)
        return cls(
            passed=sum(1 for status in statuses if status == "passed"),
            failed=sum(1 for status in statuses if status in COUNTED_FAILED),
            pending=sum(1 for status in statuses if status in PENDING),
            max_valid=max_valid,
            max_failed=max_failed,
        )

    def as_json(self) -> dict[str, int]:
        return {
            "passed": self.passed,
            "failed": self.failed,
            "pending": self.pending,
            "max_valid": self.max_valid,
            "max_failed": self.max_failed,
        }


@dataclass(frozen=True, slots=True)
class PtsClaim(Quota):
    """The quota as `claim` counted it, and its verdict: `row_id` is None when refused."""

    row_id: int | None
    refusal: str | None


def quota_statuses(
    rows: Iterable[PtsSubmission | dict[str, Any]], *, count_tests: bool
) -> list[str]:
    """The statuses that count against the quota: every non-test row, and (with
    `count_tests`) each failed or unknown test as a failure."""
    statuses: list[str] = []
    for row in rows:
        test, status = (
            (row["test"], row["status"]) if isinstance(row, dict) else (row.test, row.status)
        )
        if not test:
            statuses.append(status)
        elif count_tests and status in TEST_COUNTED_FAILED:
            statuses.append("failed")
    return statuses


def _rows(txn: Transaction, fk_system: int, period: str) -> list[dict[str, Any]]:
    value = txn.state(NAMESPACE, f"ledger:{fk_system}:{period}")
    return list(orjson.loads(value)) if value else []


def _save(txn: Transaction, fk_system: int, period: str, rows: list[dict[str, Any]]) -> None:
    txn.put_state(NAMESPACE, {f"ledger:{fk_system}:{period}": orjson.dumps(rows).decode()})


def _override(source: Store | Transaction, fk_system: int, period: str) -> dict[str, Any] | None:
    value = source.state(NAMESPACE, f"quota:{fk_system}:{period}")
    return dict(orjson.loads(value)) if value else None


def claim(
    store: Store,
    fk_system: int,
    period: str,
    *,
    origin: str,
    meter_value: float,
    meter_date: str,
    sample_id: int | None,
    max_valid: int,
    max_failed: int,
    now_ms: int,
    tolerance_kwh: float,
    count_tests: bool = False,
    check_only: bool = False,
) -> PtsClaim:
    """Check the quota and record a submission about to be sent, in ONE transaction.

    Limits: the override recorded for this system and window, else the given ones.
    Refused while a submission is pending, when this very reading already passed, when
    passed + pending reached the valid limit or failed + pending the failed limit.
    `check_only`: the same verdict, nothing recorded (row_id stays None).
    """
    with store.transaction() as txn:
        override = _override(txn, fk_system, period)
        if override is not None:
            max_valid, max_failed = int(override["max_valid"]), int(override["max_failed"])
        rows = _rows(txn, fk_system, period)
        counted = [row for row in rows if not row["test"]]
        statuses = quota_statuses(rows, count_tests=count_tests)
        quota = Quota.count(statuses, max_valid, max_failed)
        same = any(
            row["status"] == "passed"
            and same_reading(
                meter_value,
                meter_date,
                row["meter_value"],
                row["meter_date"],
                tolerance_kwh=tolerance_kwh,
            )
            for row in counted
        )
        refusal = None
        if quota.pending:
            refusal = "a submission is still pending (its outcome is not known yet)"
        elif same:
            refusal = "this reading already passed (last one in wins: never resubmitted)"
        elif quota.passed >= max_valid:
            refusal = f"valid quota used: {quota.passed} of {max_valid} submissions passed"
        elif quota.failed >= max_failed:
            refusal = f"failed quota used: {quota.failed} of {max_failed} submissions failed"
        row_id = None
        if refusal is None and not check_only:
            row_id = len(rows) + 1
            entry = NewEntry(
                test=False,
                origin=origin,
                meter_value=meter_value,
                meter_date=meter_date,
                sample_id=sample_id,
                status="sending",
            )
            rows.append(entry.row(row_id, now_ms))
            _save(txn, fk_system, period, rows)
    return PtsClaim(
        passed=quota.passed,
        failed=quota.failed,
        pending=quota.pending,
        max_valid=max_valid,
        max_failed=max_failed,
        row_id=row_id,
        refusal=refusal,
    )


def record(store: Store, fk_system: int, period: str, entry: NewEntry, *, now_ms: int) -> int:
    """Record a ledger entry whose outcome is already known (tests, what PTS already has)."""
    with store.transaction() as txn:
        rows = _rows(txn, fk_system, period)
        row = entry.row(len(rows) + 1, now_ms)
        rows.append(row)
        _save(txn, fk_system, period, rows)
    return int(row["id"])


def update(
    store: Store,
    fk_system: int,
    period: str,
    row_id: int,
    *,
    status: str,
    now_ms: int,
    http_status: int | None = None,
    validation_notes: str | None = None,
    detail: str | None = None,
) -> None:
    """Set a ledger entry's outcome (fields given as None keep their value)."""
    with store.transaction() as txn:
        rows = _rows(txn, fk_system, period)
        for row in rows:
            if row["id"] == row_id:
                row["status"], row["updated_ms"] = status, now_ms
                if http_status is not None:
                    row["http_status"] = http_status
                if validation_notes is not None:
                    row["validation_notes"] = validation_notes
                if detail is not None:
                    row["detail"] = detail[:MAX_BODY_CHARS]
                break
        else:
            raise KeyError(f"no PTS ledger entry {fk_system}/{period}/{row_id}")
        _save(txn, fk_system, period, rows)


def submissions(
    store: Store, fk_system: int | None = None, period: str | None = None
) -> list[PtsSubmission]:
    """Ledger entries, oldest first, optionally of one system and/or one window."""
    found: list[PtsSubmission] = []
    for key, value in store.query(
        "SELECT key, value FROM uplink_state WHERE uplink = ? AND key LIKE 'ledger:%'",
        (NAMESPACE,),
    ):
        assert isinstance(key, str) and isinstance(value, str)
        _, fk_text, key_period = key.split(":", 2)
        if fk_system is not None and int(fk_text) != fk_system:
            continue
        if period is not None and key_period != period:
            continue
        found.extend(
            PtsSubmission(fk_system=int(fk_text), period=key_period, **row)
            for row in orjson.loads(value)
        )
    found.sort(key=lambda row: (row.created_ms, row.fk_system, row.id))
    return found


def record_override(
    store: Store,
    fk_system: int,
    period: str,
    *,
    max_valid: int,
    max_failed: int,
    reason: str,
    now_ms: int,
) -> None:
    """Record limits the MassCEC help desk set for one system and window (latest wins)."""
    value = {
        "max_valid": max_valid,
        "max_failed": max_failed,
        "reason": reason,
        "recorded_ms": now_ms,
    }
    store.put_state(NAMESPACE, {f"quota:{fk_system}:{period}": orjson.dumps(value).decode()})


def limits(
    store: Store, fk_system: int, period: str, max_valid: int, max_failed: int
) -> tuple[int, int, str | None]:
    """(valid, failed, override reason): the recorded override, else the given limits."""
    override = _override(store, fk_system, period)
    if override is None:
        return max_valid, max_failed, None
    return int(override["max_valid"]), int(override["max_failed"]), str(override["reason"])
