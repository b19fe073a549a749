"""A strict local stand-in for EnerKey's push API (tests and benchmarks).

Strict means: whatever the real service documents as refused, this refuses too. Rules, from
/work/shared/specs/enerkey-api.txt and NOTES.md (paths and body are UNKNOWN there: this fake
serves the gateway's documented defaults, which tests may override):
- Only POST to the two push paths (others 404, other methods 405).
- `Authorization` must be exactly one of the profile's keys that is not revoked, else 401.
  Keys are named (e.g. "A", "B") so tests can revoke one.
- Per key, at most `limit` calls in any `window_secs` (EnerKey: 40 000 per 24 h). Every answer
  to an accepted key carries `X-Rate-Limit: <calls left>`; when none are left: 429 with
  Retry-After (seconds until the oldest call leaves the window), no X-Rate-Limit.
- Content-Type application/json (415), UTF-8 JSON object without duplicate keys or NaN (400),
  exactly {meterId, values}: ONE meter per message (400). meterId a number or string; a meter
  the profile does not have: 404 (when meters were registered).
- values: a non-empty list of exactly {timestamp, value}; value a finite number; timestamp
  `YYYY-MM-DDThh:mm:ss[.fff]` with `Z` or `±hh:mm`, on the hour as written (minutes, seconds
  and fraction zero), else 400. The hours of one message span less than 365 days (400).
- Effect, as the document says for push ("Multiple values for same hour are summed."): every
  value of one meter and hour is SUMMED, consumption and cumulative readings alike (the reading
  that hurts a client most: a cumulative reading sent twice doubles that hour's reading).
- A success answer is `200 application/json` `{"status": "ok"}` (the document names no body;
  "JSON format" is all it says).

Failure injection happens before any check (as a load balancer would): fail_next;
process_then_drop(n) handles the next n valid pushes and then closes the connection without an
answer (the "was it received?" case); process_then_hang(n) handles them and never answers (a
power cut while the request is in flight); answer_with(status, body, content_type) answers the
next request with a page of its own after a check-free accept (a captive portal, a proxy).
Importable without pytest.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from tests.fakes.loopback import LoopbackServer

#: The gateway's documented default paths, written out here on purpose (not imported).
CUMULATIVE_PATH = "/api/v2/Values/PushCumulativeReadingsForMeter"
CONSUMPTION_PATH = "/api/v2/Values/PushConsumptionsForMeter"

HOUR_MS = 3_600_000
MAX_SPAN = timedelta(days=365)

_TS = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})", re.ASCII
)


class _Invalid(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Push:
    """One accepted message."""

    operation: str  # "cumulative" | "consumption"
    meter_id: int | str
    key: str  # the key's name, never the secret
    #: (epoch ms, value) in the order sent; the timestamps as written.
    values: list[tuple[int, float]]
    stamps: list[str]


@dataclass(frozen=True)
class Rejection:
    status: int
    reason: str
    body: bytes


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_hour(text: object) -> int:
    """Epoch ms of an on-the-hour timestamp in either documented form, else _Invalid(400)."""
    if not isinstance(text, str):
        raise _Invalid(400, "timestamp must be a string")
    match = _TS.fullmatch(text)
    if match is None:
        raise _Invalid(400, f"timestamp {text!r}: use 2017-01-01T00:00:00Z or ...+02:00")
    minute, second, fraction = match.group(5), match.group(6), match.group(7)
    if minute != "00" or second != "00" or (fraction and fraction.strip(".0")):
        raise _Invalid(400, f"timestamp {text!r} is not on the hour (data resolution is hourly)")
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _Invalid(400, f"timestamp {text!r}: {exc}") from exc
    offset = when.utcoffset()
    if offset is None or abs(offset) > timedelta(hours=14):
        raise _Invalid(400, f"timestamp {text!r}: offset out of range")
    return round(when.timestamp() * 1000)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate_message(
    body: bytes, fields: Mapping[str, str] | None = None
) -> tuple[int | str, list[tuple[int, float]], list[str]]:
    """(meter id, (epoch ms, value) pairs, timestamps as written), or _Invalid."""
    names = {"meter_id": "meterId", "values": "values", "timestamp": "timestamp", "value": "value"}
    names.update(fields or {})
    try:
        document = json.loads(
            body.decode("utf-8"), parse_constant=_no_constants, object_pairs_hook=_no_duplicates
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Invalid(400, f"invalid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise _Invalid(400, "the body must be one JSON object (one meter per message)")
    expected = {names["meter_id"], names["values"]}
    if set(document) != expected:
        raise _Invalid(400, f"the body has exactly the fields {sorted(expected)}")
    meter = document[names["meter_id"]]
    if isinstance(meter, bool) or not (
        (isinstance(meter, int) and meter >= 0) or (isinstance(meter, str) and meter)
    ):
        raise _Invalid(400, "meterId must be a meter id (number or string)")
    items = document[names["values"]]
    if not isinstance(items, list) or not items:
        raise _Invalid(400, "values must be a non-empty list")
    values: list[tuple[int, float]] = []
    stamps: list[str] = []
    item_fields = {names["timestamp"], names["value"]}
    for item in items:
        if not isinstance(item, dict) or set(item) != item_fields:
            raise _Invalid(400, f"each value has exactly the fields {sorted(item_fields)}")
        value = item[names["value"]]
        if not _number(value):
            raise _Invalid(400, f"value must be a number, got {json.dumps(value)}")
        stamp = item[names["timestamp"]]
        values.append((parse_hour(stamp), float(value)))
        stamps.append(stamp)
    instants = [ts for ts, _ in values]
    if max(instants) - min(instants) >= MAX_SPAN.total_seconds() * 1000:
        raise _Invalid(400, "the API accepts data for 365 days at a time")
    return meter, values, stamps


class FakeEnerKey(LoopbackServer):
    """Strict fake EnerKey on loopback; `async with` starts and stops it (safe to exit twice)."""

    def __init__(
        self,
        keys: Mapping[str, str],
        meters: set[int | str] | None = None,
        *,
        limit: int = 40_000,
        window_secs: float = 86_400.0,
        host: str = "127.0.0.1",
        port: int = 0,
        cumulative_path: str = CUMULATIVE_PATH,
        consumption_path: str = CONSUMPTION_PATH,
        fields: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.keys = dict(keys)
        self.meters = set(meters) if meters is not None else None
        self.limit = limit
        self.window_secs = window_secs
        self.paths = {cumulative_path: "cumulative", consumption_path: "consumption"}
        self.fields = dict(fields or {})
        self._revoked: set[str] = set()
        self._calls: dict[str, deque[float]] = {}
        #: Accepted messages in arrival order.
        self.pushes: list[Push] = []
        #: meter -> hour (epoch ms) -> reading, SUMMED over every push of that hour.
        self.cumulative: dict[int | str, dict[int, float]] = {}
        #: meter -> hour -> consumption, SUMMED over every push of that hour (as EnerKey does).
        self.consumption: dict[int | str, dict[int, float]] = {}
        #: How often each (operation, meter, hour) was received.
        self.received: Counter[tuple[str, int | str, int]] = Counter()
        self.rejected: list[Rejection] = []
        self.statuses: Counter[int] = Counter()
        #: (key name or None, status) of every answered request, in order.
        self.history: list[tuple[str | None, int]] = []
        self._fail_next: list[tuple[int, float | None]] = []
        self._drop_after = 0
        self._hang_after = 0
        self._release = asyncio.Event()
        self._pages: list[tuple[int, bytes, str]] = []
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        self._release.set()  # held answers go before the server does
        await super().stop()

    # -- control --------------------------------------------------------------------------------

    def revoke(self, name: str) -> None:
        """Key `name` is refused (401) from now on."""
        self._revoked.add(name)

    def restore(self, name: str) -> None:
        self._revoked.discard(name)

    def fail_next(self, n: int, status: int = 503, *, retry_after: float | None = None) -> None:
        """Answer the next `n` requests with `status` before any check."""
        self._fail_next.extend([(status, retry_after)] * n)

    def heal(self) -> None:
        """Forget injected failures that have not happened yet."""
        self._fail_next.clear()
        self._drop_after = 0

    def process_then_drop(self, n: int) -> None:
        """Take the next `n` valid pushes, then close the connection without answering."""
        self._drop_after += n

    def process_then_hang(self, n: int) -> None:
        """Take the next `n` valid pushes and hold their answers until `release()`."""
        self._hang_after += n

    def release(self) -> None:
        """Let held answers go (they answer 200)."""
        self._release.set()

    def answer_with(self, status: int, body: bytes, content_type: str = "text/html") -> None:
        """The next request is answered with this page, before any check (nothing is taken)."""
        self._pages.append((status, body, content_type))

    def remaining(self, name: str) -> int:
        return self.limit - len(self._window(name))

    # -- observation ----------------------------------------------------------------------------

    def hours(self, meter: int | str, operation: str = "cumulative") -> dict[int, float]:
        table = self.cumulative if operation == "cumulative" else self.consumption
        return dict(table.get(meter, {}))

    def duplicates(self) -> list[tuple[str, int | str, int]]:
        """(operation, meter, hour) received more than once."""
        return [item for item, count in self.received.items() if count > 1]

    async def wait_hours(
        self, meter: int | str, count: int, operation: str = "cumulative", timeout: float = 5.0
    ) -> None:
        """Wait until `count` distinct hours of `meter` were received (TimeoutError otherwise)."""
        async with asyncio.timeout(timeout):
            while len(self.hours(meter, operation)) < count:
                event = self._changed
                await event.wait()

    async def wait_requests(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.history) < count:
                event = self._changed
                await event.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- HTTP -----------------------------------------------------------------------------------

    def _window(self, name: str) -> deque[float]:
        calls = self._calls.setdefault(name, deque())
        horizon = time.monotonic() - self.window_secs
        while calls and calls[0] <= horizon:
            calls.popleft()
        return calls

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        key_name: str | None = None
        headers: dict[str, str] = {}
        drop = hang = False
        if self._pages:
            status, page, content_type = self._pages.pop(0)
            self.history.append((None, status))
            self.statuses[status] += 1
            self._notify()
            return web.Response(status=status, body=page, content_type=content_type)
        try:
            if self._fail_next:
                status, retry_after = self._fail_next.pop(0)
                if retry_after is not None:
                    headers["Retry-After"] = f"{retry_after:g}"
                raise _Invalid(status, f"injected {status}")
            operation = self.paths.get(request.path)
            if operation is None:
                raise _Invalid(404, "not found")
            if request.method != "POST":
                raise _Invalid(405, "method not allowed")
            key_name = self._key(request.headers.get("Authorization"))
            calls = self._window(key_name)
            if len(calls) >= self.limit:
                wait = calls[0] + self.window_secs - time.monotonic()
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
                raise _Invalid(429, "rate limit exceeded")
            calls.append(time.monotonic())
            headers["X-Rate-Limit"] = str(self.limit - len(calls))
            if request.content_type != "application/json":
                raise _Invalid(415, "Content-Type must be application/json")
            meter, values, stamps = validate_message(body, self.fields)
            if self.meters is not None and meter not in self.meters:
                raise _Invalid(404, f"meter {meter!r} not found")
            self._apply(Push(operation, meter, key_name, values, stamps))
            if self._drop_after:
                self._drop_after -= 1
                drop = True
            elif self._hang_after:
                self._hang_after -= 1
                hang = True
            response = web.json_response({"status": "ok"}, headers=headers)
        except _Invalid as exc:
            if exc.status not in (401, 429) and not exc.reason.startswith("injected"):
                self.rejected.append(Rejection(exc.status, exc.reason, body))
            response = web.json_response({"error": exc.reason}, status=exc.status, headers=headers)
        self.history.append((key_name, 0 if drop else response.status))
        self.statuses[response.status] += 1
        self._notify()
        if drop and request.transport is not None:
            request.transport.close()
        if hang:
            await self._release.wait()
        return response

    def _key(self, header: str | None) -> str:
        for name, secret in self.keys.items():
            if header == secret and name not in self._revoked:
                return name
        raise _Invalid(401, "invalid or missing API key")

    def _apply(self, push: Push) -> None:
        self.pushes.append(push)
        for hour, value in push.values:
            self.received[(push.operation, push.meter_id, hour)] += 1
            tables = self.cumulative if push.operation == "cumulative" else self.consumption
            table = tables.setdefault(push.meter_id, {})
            table[hour] = table.get(hour, 0.0) + value
