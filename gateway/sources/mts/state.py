"""What the MTS source remembers across restarts, in the store (namespace `source:mts`).

Invariants:
1. A test request is recorded as an *intent* (meter, requestReference, time) BEFORE it is sent,
   and its testId right after MTS answers. So after any crash a pending test is either known by
   id (polling resumes) or by reference (test-search finds it, or it never reached MTS).
2. A pending entry is removed only after its result is in the store (or was reported as an
   error, timed out, or cancelled): a result is never lost between poll and store.
3. Every write stores the whole snapshot taken at call time; writes run in call order on the
   store's one thread, so the last write holds every earlier change.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, Final

from gateway.store.async_store import AsyncStore

log = logging.getLogger(__name__)

NAMESPACE: Final = "source:mts"
_PENDING: Final = "pending"
_LAST_REQUEST: Final = "last_request"


@dataclass(frozen=True)
class PendingTest:
    reference: str
    requested_ms: int
    test_id: int | None = None


class MtsState:
    def __init__(self, store: AsyncStore) -> None:
        self._store = store
        self.pending: dict[str, PendingTest] = {}
        #: meter -> when its last test was requested (UTC ms): the schedule's memory.
        self.last_request: dict[str, int] = {}

    async def load(self) -> None:
        pending = _load_json(await self._store.state(NAMESPACE, _PENDING))
        for meter, entry in pending.items():
            try:
                self.pending[meter] = PendingTest(
                    str(entry["reference"]),
                    int(entry["requested_ms"]),
                    None if entry.get("test_id") is None else int(entry["test_id"]),
                )
            except (KeyError, TypeError, ValueError):
                log.warning("mts: ignoring an unreadable pending test of %s in the store", meter)
        last = _load_json(await self._store.state(NAMESPACE, _LAST_REQUEST))
        self.last_request = {
            meter: int(value) for meter, value in last.items() if isinstance(value, int | float)
        }

    async def set_pending(self, meter: str, test: PendingTest | None) -> None:
        if test is None:
            self.pending.pop(meter, None)
        else:
            self.pending[meter] = test
        await self._save({_PENDING: self._pending_json()})

    async def requested(self, meter: str, test: PendingTest, at_ms: int) -> None:
        """A test id arrived: record it and the schedule's memory in one transaction."""
        self.pending[meter] = test
        self.last_request[meter] = at_ms
        await self._save({_PENDING: self._pending_json(), _LAST_REQUEST: self._last_json()})

    async def mark_requested(self, meter: str, at_ms: int) -> None:
        self.last_request[meter] = at_ms
        await self._save({_LAST_REQUEST: self._last_json()})

    async def forget(self, meter: str) -> None:
        """A meter removed from config: nothing of it stays."""
        self.pending.pop(meter, None)
        self.last_request.pop(meter, None)
        await self._save({_PENDING: self._pending_json(), _LAST_REQUEST: self._last_json()})

    def _pending_json(self) -> str:
        return json.dumps({meter: asdict(test) for meter, test in sorted(self.pending.items())})

    def _last_json(self) -> str:
        return json.dumps(dict(sorted(self.last_request.items())))

    async def _save(self, values: dict[str, str]) -> None:
        await self._store.put_state(NAMESPACE, values)


def _load_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        log.warning("mts: unreadable state in the store, starting afresh")
        return {}
    return data if isinstance(data, dict) else {}
