"""The dead-letter table of the store: items an uplink could not deliver, moved aside with the
cursor moving past them in the same transaction (gateway.store.database, invariant 3), and
re-queued by an operator (`meter-gateway deadletters --requeue`).

A mixin of `Store` (which owns the connection and its transactions), kept apart so that the
store module stays readable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from core.redact import redact

#: Response bodies kept in the dead-letter table are cut to this many characters.
MAX_BODY_CHARS = 4000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    uplink: str
    stream: str
    sample_id: int
    payload: str
    status: int | None
    body: str
    attempts: int
    parked_at_ms: int
    requeued_at_ms: int | None


class DeadLetterTable:
    """Store's dead-letter operations (Store provides the connection and transactions)."""

    _db: sqlite3.Connection
    #: Changes whenever dead letters may have been re-queued (the uplinks look only then).
    requeue_generation: int

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _advance(self, db: sqlite3.Connection, uplink: str, stream: str, position: int) -> None:
        raise NotImplementedError

    def _put_state(self, db: sqlite3.Connection, uplink: str, values: Mapping[str, str]) -> None:
        raise NotImplementedError

    def park(
        self,
        uplink: str,
        stream: str,
        sample_id: int,
        *,
        payload: str,
        status: int | None,
        body: str,
        attempts: int,
        now_ms: int,
        state: Mapping[str, str] | None = None,
    ) -> int:
        """Move one undeliverable item aside and advance past it (with the uplink's `state`,
        when given), in one transaction.
        """
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO dead_letters "
                "(uplink, stream, sample_id, payload, status, body, attempts, parked_at_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    uplink,
                    stream,
                    sample_id,
                    payload,
                    status,
                    redact(body)[:MAX_BODY_CHARS],  # a server may echo a secret
                    attempts,
                    now_ms,
                ),
            )
            self._advance(db, uplink, stream, sample_id)
            if state:
                self._put_state(db, uplink, state)
        return int(cursor.lastrowid or 0)

    def dead_letters(
        self, uplink: str | None = None, *, include_requeued: bool = False
    ) -> list[DeadLetter]:
        query = "SELECT * FROM dead_letters WHERE (? IS NULL OR uplink = ?)"
        if not include_requeued:
            query += " AND requeued_at_ms IS NULL"
        rows = self._db.execute(query + " ORDER BY id", (uplink, uplink)).fetchall()
        return [DeadLetter(*row) for row in rows]

    def requeue(
        self,
        uplink: str,
        *,
        ids: Sequence[int] | None = None,
        stream: str | None = None,
        now_ms: int,
    ) -> list[DeadLetter]:
        """Mark parked items of `uplink` (all, those of `stream`, or those with `ids`) to be
        sent again by the running uplink; returns what was marked."""
        query = "SELECT * FROM dead_letters WHERE uplink = ? AND requeued_at_ms IS NULL"
        params: list[object] = [uplink]
        if stream is not None:
            query += " AND stream = ?"
            params.append(stream)
        if ids is not None:
            query += f" AND id IN ({','.join('?' * len(ids))})"
            params.extend(ids)
        with self._transaction() as db:
            rows = [DeadLetter(*row) for row in db.execute(query + " ORDER BY id", params)]
            db.executemany(
                "UPDATE dead_letters SET requeued_at_ms = ? WHERE id = ?",
                [(now_ms, row.id) for row in rows],
            )
        self.requeue_generation += 1
        return rows

    def requeued_letters(self, uplink: str, stream: str) -> list[DeadLetter]:
        """Items an operator re-queued for `stream`, oldest sample first."""
        rows = self._db.execute(
            "SELECT * FROM dead_letters WHERE uplink = ? AND stream = ? "
            "AND requeued_at_ms IS NOT NULL ORDER BY sample_id, id",
            (uplink, stream),
        ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def repark(
        self, letter_id: int, *, status: int | None, body: str, attempts: int, now_ms: int
    ) -> None:
        """A re-queued item refused again: parked once more, with the new answer."""
        with self._transaction() as db:
            db.execute(
                "UPDATE dead_letters SET requeued_at_ms = NULL, status = ?, body = ?, "
                "attempts = attempts + ?, parked_at_ms = ? WHERE id = ?",
                (status, redact(body)[:MAX_BODY_CHARS], attempts, now_ms, letter_id),
            )

    def forget_dead_letter(self, letter_id: int) -> None:
        """A re-queued item was delivered: it leaves the table."""
        with self._transaction() as db:
            db.execute("DELETE FROM dead_letters WHERE id = ?", (letter_id,))

    def dead_letter_count(self, uplink: str) -> int:
        return int(
            self._db.execute(
                "SELECT COUNT(*) FROM dead_letters WHERE uplink = ? AND requeued_at_ms IS NULL",
                (uplink,),
            ).fetchone()[0]
        )
