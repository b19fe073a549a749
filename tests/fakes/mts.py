"""A strict local stand-in for Coherent Research's MTS API (tests).

Strict means: whatever the real service documents as refused, this refuses too. Rules, from
/work/shared/specs/mts-meter-test-api.txt and NOTES.md:
- Paths `<prefix>/test-request` (POST), `/test-cancel` (DELETE), `/test-status`, `/test-search`,
  `/service-status` (GET); another path 404, another method 405.
- Every call but service-status needs `Authorization: Bearer <token>` (else 401 with
  `details`); `forbid()` makes a valid token answer 403 with `details`. Every call sends
  `Accept: application/json` (400 otherwise).
- Commands carry a JSON object body with `Content-Type: application/json` (400 otherwise);
  test-cancel takes `{"testId": n}` in the DELETE body, not in the URL. Queries carry their
  parameters in the query string; unknown parameters are refused (400).
- test-request: meterType and remoteAddress required strings, remoteAddress a phone number or
  host:port (the document's "abc" is refused with its sample message), immediate a bool,
  surveyDays an integer 0..max_survey_days, surveyDate yyyy-MM-dd; answers `{"testId": n}`.
- test-status `?testid=` as in the document's examples (its table says `testId`): exactly one
  spelling is accepted, `status_query_key` (default the examples' `testid`; query names are
  case-sensitive), the other is 400. An unknown id is 400, not 404.
  A test is PENDING until it was polled `polls_until_done` times (or `release()` after
  `hold()`); then it is run against the simulated meter and its result is fixed.
- test-search: fromTime required (`YYYY-MM-DDTHH:mm:ssZ`), limit at most `max_page` (400
  above; without limit the server caps at max_page), offset, filters requestReference (exact),
  meterType, remoteAddress, status (ALL/COMPLETED/PENDING), reverseOrder.
- Errors: `{"details": [...]}` or, as in the document's sample, a plain string.
- Rate limit: at most `rate_limit` calls per `rate_window_secs` (fixed window, per token):
  429 `{"retryAfter": seconds}`.
- Answers use BOTH of the document's shapes: odd test ids get the sample's (`resultSummary`,
  `registers`, `testid`, numbers as strings with thousands separators, times without `Z`, a
  garbled meterTime, unknown extra fields); even ids the tables' (`result`, `registerValues`,
  JSON numbers, `Z` times).

Failure injection happens before any check: fail_next (status, optional raw body or
retryAfter), garbage_next (200 with a raw body), drop_connections. Importable without pytest.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiohttp import web

from tests.fakes.loopback import LoopbackServer

PERIOD_MS = 1_800_000
DAY_MS = 86_400_000

_SEARCH_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_REMOTE = re.compile(r"^(\+?[0-9 ]{5,20}|[A-Za-z0-9.-]+:\d{1,5})$")

REQUEST_PARAMS = {
    "requestReference": str,
    "immediate": bool,
    "meterType": str,
    "remoteAddress": str,
    "comsSettings": str,
    "outstationAddress": str,
    "serialNumber": str,
    "password": str,
    "surveyDays": int,
    "surveyDate": str,
}
SEARCH_PARAMS = frozenset(
    {
        "requestReference",
        "fromTime",
        "toTime",
        "meterType",
        "remoteAddress",
        "status",
        "limit",
        "offset",
        "reverseOrder",
    }
)


class _Invalid(Exception):
    def __init__(self, status: int, details: str | list[str]) -> None:
        super().__init__(str(details))
        self.status = status
        self.details = details


def default_energy_kwh(ts_ms: int) -> float:
    """The simulated import register: 1000 kWh at the epoch of 2026, +12 kWh per hour."""
    return round(1000.0 + (ts_ms - 1_767_225_600_000) / 3_600_000 * 12.0, 3)


@dataclass
class FakeMeter:
    """A meter MTS can dial, by remote address."""

    remote_address: str
    serial: str = "12345678"
    meter_type: str = "ELSTERA1700"
    password: str | None = None
    #: Cumulative import kWh at an instant (epoch ms): survey readings and the register.
    energy_kwh: Callable[[int], float] = default_energy_kwh
    #: The result of a test: "SUCCESS", "PARTIAL SUCCESS" or "ERROR: ...".
    outcome: str = "SUCCESS"
    #: Seconds the meter's clock is ahead (+) or behind (-) of real time.
    clock_offset_s: int = 10
    #: What the meter answers when asked its serial number (default: `serial`).
    reported_serial: str | None = None


@dataclass
class FakeTest:
    test_id: int
    params: dict[str, Any]
    received_ms: int
    polls: int = 0
    state: str = "PENDING"  # PENDING, DONE, CANCELLED
    result: dict[str, Any] | None = None
    completed_ms: int | None = None

    @property
    def reference(self) -> str | None:
        return self.params.get("requestReference")

    @property
    def summary(self) -> str:
        if self.state == "PENDING":
            return "PENDING"
        if self.state == "CANCELLED":
            return "ERROR: Cancelled"
        assert self.result is not None
        return str(self.result["outcome"])


@dataclass
class _Injected:
    status: int
    body: bytes | None = None
    retry_after: float | None = None


class FakeMts(LoopbackServer):
    """Strict fake MTS on loopback; `async with` starts and stops it (safe to exit twice)."""

    def __init__(
        self,
        token: str = "mts-token",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str = "/MTS",
        max_page: int = 5,
        max_survey_days: int = 31,
        polls_until_done: int = 1,
        rate_limit: int | None = None,
        rate_window_secs: float = 1.0,
        now: Callable[[], float] = time.time,
        status_query_key: str = "testid",
    ) -> None:
        self.status_query_key = status_query_key
        self.host = host
        self.port = port
        self.prefix = prefix.rstrip("/")
        self.token: str | None = token
        self.max_page = max_page
        self.max_survey_days = max_survey_days
        self.polls_until_done = polls_until_done
        self.rate_limit = rate_limit
        self.rate_window_secs = rate_window_secs
        self._now = now
        self.meters: dict[str, FakeMeter] = {}
        self.tests: dict[int, FakeTest] = {}
        self.next_id = 1001
        self.forbidden = False
        self.held = False
        self.service_ok = True
        #: Calls by operation (every answered request), and answers by status.
        self.calls: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        #: (operation, status, details) of every refused call.
        self.refused: list[tuple[str, int, str | list[str]]] = []
        self.cancelled: list[int] = []
        #: retryAfter of every 429 the rate limit gave (integer seconds, as documented).
        self.retry_afters: list[int] = []
        #: (time.monotonic(), operation, status) of every answered request.
        self.history: list[tuple[float, str, int]] = []
        #: Headers of every request as received (to check what was sent, e.g. no token).
        self.seen_headers: list[tuple[str, dict[str, str]]] = []
        self._injected: list[_Injected] = []
        self._drop = 0
        self._process_then_drop: tuple[int, str | None] = (0, None)
        self._window_start = 0.0
        self._window_calls = 0
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}"

    # -- set-up and injection -----------------------------------------------------------------

    def add_meter(self, meter: FakeMeter) -> FakeMeter:
        self.meters[meter.remote_address] = meter
        return meter

    def create_test(self, params: dict[str, Any], received_ms: int | None = None) -> int:
        """A test as if requested earlier (e.g. by a gateway that crashed before storing its id)."""
        test_id = self.next_id
        self.next_id += 1
        when = int(self._now() * 1000) if received_ms is None else received_ms
        self.tests[test_id] = FakeTest(test_id, dict(params), when)
        return test_id

    def hold(self) -> None:
        """Keep every test PENDING until release()."""
        self.held = True

    def release(self) -> None:
        self.held = False

    def forbid(self, forbidden: bool = True) -> None:
        self.forbidden = forbidden

    def fail_next(
        self,
        n: int,
        status: int = 503,
        *,
        body: bytes | None = None,
        retry_after: int | None = None,
    ) -> None:
        self._injected.extend([_Injected(status, body, retry_after)] * n)

    def garbage_next(self, n: int, body: bytes = b"<html>maintenance</html>") -> None:
        """Answer the next `n` calls 200 with `body` (not what MTS promises)."""
        self._injected.extend([_Injected(200, body)] * n)

    def drop_connections(self, n: int) -> None:
        """Close the socket of the next `n` requests without handling them."""
        self._drop += n

    def process_then_drop(self, n: int, operation: str | None = None) -> None:
        """Handle the next `n` valid requests (of `operation`, e.g. "test-request"), then close
        the socket without an answer: the "did MTS get it?" case."""
        self._process_then_drop = (n, operation)

    # -- observation --------------------------------------------------------------------------

    def requested(self) -> list[dict[str, Any]]:
        """Parameters of the tests requested over HTTP, in order."""
        return [t.params for t in sorted(self.tests.values(), key=lambda t: t.test_id)]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                event = self._changed
                await event.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- HTTP ---------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        operation = request.path.removeprefix(self.prefix).strip("/")
        self.seen_headers.append((operation, dict(request.headers)))
        body = await request.read()
        if self._drop:
            self._drop -= 1
            if request.transport is not None:
                request.transport.close()
            self._notify()
            return web.Response(status=500)  # never reaches the client: the socket is gone
        response = self._inject() or self._answer(request, operation, body)
        dropping = self._process_then_drop
        if dropping[0] and response.status == 200 and dropping[1] in (None, operation):
            self._process_then_drop = (dropping[0] - 1, dropping[1])
            if request.transport is not None:
                request.transport.close()  # done, but the client never hears it
        self.calls[operation] += 1
        self.statuses[response.status] += 1
        self.history.append((time.monotonic(), operation, response.status))
        self._notify()
        return response

    def _inject(self) -> web.Response | None:
        if not self._injected:
            return None
        injected = self._injected.pop(0)
        if injected.body is not None:
            return web.Response(status=injected.status, body=injected.body)
        if injected.status == 429:
            return web.json_response({"retryAfter": injected.retry_after or 1}, status=429)
        return web.json_response(
            {"details": [f"injected {injected.status}"]}, status=injected.status
        )

    def _answer(self, request: web.Request, operation: str, body: bytes) -> web.Response:
        routes: dict[str, tuple[str, Callable[[web.Request, bytes], Any]]] = {
            "test-request": ("POST", self._test_request),
            "test-cancel": ("DELETE", self._test_cancel),
            "test-status": ("GET", self._test_status),
            "test-search": ("GET", self._test_search),
            "service-status": ("GET", self._service_status),
        }
        if not request.path.startswith(self.prefix + "/") or operation not in routes:
            return web.Response(status=404, text="Not Found")
        method, handler = routes[operation]
        if request.method != method:
            return web.Response(status=405, text="Method Not Allowed")
        try:
            if "application/json" not in request.headers.get("Accept", ""):
                raise _Invalid(400, ["Accept: application/json is required"])
            if operation != "service-status":
                self._check_auth(request)
                self._check_rate()
            return web.json_response(handler(request, body))
        except _Invalid as exc:
            self.refused.append((operation, exc.status, exc.details))
            if exc.status == 429:
                return web.json_response({"retryAfter": self.retry_afters[-1]}, status=429)
            return web.json_response({"details": exc.details}, status=exc.status)

    def _check_auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if self.token is None or scheme != "Bearer" or token != self.token:
            raise _Invalid(401, ["A valid API access token is required"])
        if self.forbidden:
            raise _Invalid(403, ["The token does not have the MTS API scope"])

    def _check_rate(self) -> None:
        if self.rate_limit is None:
            return
        now = time.monotonic()
        if now - self._window_start >= self.rate_window_secs:
            self._window_start, self._window_calls = now, 0
        self._window_calls += 1
        if self._window_calls > self.rate_limit:
            left = self.rate_window_secs - (now - self._window_start)
            self.retry_afters.append(max(1, math.ceil(left)))
            raise _Invalid(429, ["Too many requests"])

    # -- commands -----------------------------------------------------------------------------

    @staticmethod
    def _command_body(request: web.Request, body: bytes) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise _Invalid(400, ["Content-type must be application/json"])
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise _Invalid(400, [f"Body is not valid JSON: {exc}"]) from exc
        if not isinstance(data, dict):
            raise _Invalid(400, ["Body must be a JSON object"])
        return data

    def _test_request(self, request: web.Request, body: bytes) -> dict[str, Any]:
        params = self._command_body(request, body)
        problems = []
        for name, value in params.items():
            kind = REQUEST_PARAMS.get(name)
            if kind is None:
                problems.append(f"Unknown parameter {name}")
            elif kind is int:
                if isinstance(value, bool) or not isinstance(value, int):
                    problems.append(f"{name} must be a number")
            elif not isinstance(value, kind):
                problems.append(f"{name} must be a {kind.__name__}")
        for name in ("meterType", "remoteAddress"):
            if not params.get(name):
                problems.append(f"{name} is required")
        if problems:
            raise _Invalid(400, problems)
        if not _REMOTE.match(params["remoteAddress"]):
            raise _Invalid(400, "Remote address is not in a recognised format")
        days = params.get("surveyDays", 0)
        if not 0 <= days <= self.max_survey_days:
            raise _Invalid(400, [f"surveyDays must be between 0 and {self.max_survey_days}"])
        survey_date = params.get("surveyDate")
        if survey_date is not None and survey_date != "":
            if not _DATE.match(survey_date):
                raise _Invalid(400, ["surveyDate must be in the form yyyy-MM-dd"])
            try:
                date.fromisoformat(survey_date)
            except ValueError as exc:
                raise _Invalid(400, ["surveyDate is not a valid date"]) from exc
        return {"testId": self.create_test(params)}

    def _test_cancel(self, request: web.Request, body: bytes) -> dict[str, Any]:
        if request.query:
            raise _Invalid(400, ["test-cancel takes its parameters in the body"])
        data = self._command_body(request, body)
        test_id = data.get("testId")
        if isinstance(test_id, bool) or not isinstance(test_id, int) or set(data) != {"testId"}:
            raise _Invalid(400, ["testId (a number) is the only parameter"])
        test = self.tests.get(test_id)
        if test is None:
            raise _Invalid(400, [f"Test {test_id} does not exist"])
        if test.state == "PENDING":
            test.state = "CANCELLED"
            test.completed_ms = int(self._now() * 1000)
            self.cancelled.append(test_id)
        return {"testId": str(test_id)}

    # -- queries ------------------------------------------------------------------------------

    def _test_status(self, request: web.Request, body: bytes) -> dict[str, Any]:
        query = dict(request.query)
        name = self.status_query_key
        if set(query) != {name}:
            raise _Invalid(400, [f"{name} is the only parameter"])
        try:
            test_id = int(query[name])
        except ValueError as exc:
            raise _Invalid(400, ["testId must be a number"]) from exc
        test = self.tests.get(test_id)
        if test is None:
            raise _Invalid(400, [f"Test {test_id} does not exist"])
        if test.state == "PENDING":
            test.polls += 1
            if not self.held and test.polls >= self.polls_until_done:
                self._run(test)
        odd = test.test_id % 2 == 1
        id_key = "testid" if odd else "testId"
        result_key = "resultSummary" if odd else "result"
        if test.state == "PENDING":
            return {id_key: test.test_id, result_key: "PENDING"}
        if test.state == "CANCELLED":
            return {id_key: test.test_id, result_key: "ERROR: Test cancelled"}
        assert test.result is not None
        return self._render(test, odd)

    def _test_search(self, request: web.Request, body: bytes) -> dict[str, Any]:
        query = dict(request.query)
        unknown = sorted(set(query) - SEARCH_PARAMS)
        if unknown:
            raise _Invalid(400, [f"Unknown parameter {name}" for name in unknown])
        from_ms = _search_time(query.get("fromTime"), "fromTime", required=True)
        to_ms = _search_time(query.get("toTime"), "toTime", required=False)
        status = query.get("status", "ALL")
        if status not in ("ALL", "COMPLETED", "PENDING"):
            raise _Invalid(400, ["status must be ALL, COMPLETED or PENDING"])
        limit = _count(query.get("limit"), "limit", self.max_page)
        if limit > self.max_page:
            raise _Invalid(400, [f"limit may not exceed {self.max_page}"])
        offset = _count(query.get("offset"), "offset", 0)
        reverse = query.get("reverseOrder", "false")
        if reverse not in ("true", "false"):
            raise _Invalid(400, ["reverseOrder must be true or false"])
        matches = []
        for test in sorted(self.tests.values(), key=lambda t: (t.received_ms, t.test_id)):
            if test.received_ms < from_ms or (to_ms is not None and test.received_ms > to_ms):
                continue
            if "requestReference" in query and test.reference != query["requestReference"]:
                continue
            if "meterType" in query and test.params.get("meterType") != query["meterType"]:
                continue
            if (
                "remoteAddress" in query
                and test.params.get("remoteAddress") != query["remoteAddress"]
            ):
                continue
            if status == "PENDING" and test.state != "PENDING":
                continue
            if status == "COMPLETED" and test.state == "PENDING":
                continue
            matches.append(test)
        if reverse == "true":
            matches.reverse()
        page = matches[offset : offset + limit]
        return {
            "totalResultCount": len(matches),
            "resultCount": len(page),
            "offset": offset,
            "results": [
                {
                    "testId": test.test_id,
                    "requestReference": test.reference,
                    "meterType": test.params.get("meterType"),
                    "receivedTimestamp": _zulu(test.received_ms),
                    **(
                        {"completedTimestamp": _zulu(test.completed_ms)}
                        if test.completed_ms is not None
                        else {}
                    ),
                    "remoteAddress": test.params.get("remoteAddress"),
                    "resultSummary": test.summary,
                }
                for test in page
            ],
        }

    def _service_status(self, request: web.Request, body: bytes) -> dict[str, Any]:
        if request.query:
            raise _Invalid(400, ["service-status takes no parameters"])
        if not self.service_ok:
            raise _Invalid(503, ["Service unavailable"])
        return {"serviceVersion": "3.0.0", "status": "OK"}

    # -- the simulated meter ------------------------------------------------------------------

    def _run(self, test: FakeTest) -> None:
        """Dial the meter now: fix the result (survey up to the last complete period)."""
        now_ms = int(self._now() * 1000)
        test.state = "DONE"
        test.completed_ms = now_ms
        params = test.params
        meter = self.meters.get(params["remoteAddress"])
        if meter is None or meter.meter_type != params["meterType"]:
            test.result = {"outcome": "ERROR: No answer from meter"}
            return
        if meter.password is not None and params.get("password") != meter.password:
            test.result = {"outcome": "ERROR: Meter refused the password"}
            return
        if meter.outcome.startswith("ERROR"):
            test.result = {"outcome": meter.outcome}
            return
        reported = meter.reported_serial or meter.serial
        serial = reported
        if params.get("serialNumber") and params["serialNumber"] != reported:
            serial = f"ERROR: Serial number mismatch (meter reports {reported})"
        days = int(params.get("surveyDays", 0) or 0)
        readings: list[tuple[int, float]] = []
        if days:
            if params.get("surveyDate"):
                start = _midnight_ms(date.fromisoformat(params["surveyDate"]))
            else:
                received = datetime.fromtimestamp(test.received_ms / 1000, UTC).date()
                start = _midnight_ms(received - timedelta(days=days))
            end = min(start + days * DAY_MS, now_ms - now_ms % PERIOD_MS)
            readings = [(ts, meter.energy_kwh(ts)) for ts in range(start, end, PERIOD_MS)]
            if meter.outcome == "PARTIAL SUCCESS":
                readings = readings[: len(readings) // 2]
        test.result = {
            "outcome": meter.outcome,
            "serial": serial,
            "meter_ms": now_ms + meter.clock_offset_s * 1000,
            "offset": meter.clock_offset_s,
            "import_kwh": meter.energy_kwh(now_ms),
            "readings": readings,
        }

    def _render(self, test: FakeTest, odd: bool) -> dict[str, Any]:
        result = test.result
        assert result is not None
        params = test.params
        id_key = "testid" if odd else "testId"
        result_key = "resultSummary" if odd else "result"
        answer: dict[str, Any] = {
            id_key: test.test_id,
            result_key: result["outcome"],
            "requestReference": params.get("requestReference"),
            "meterType": params["meterType"],
            "remoteAddress": params["remoteAddress"],
            "password": params.get("password", ""),
            "surveyDays": params.get("surveyDays", 0),
            "testRequestTime": _time(test.received_ms, odd),
            "futureProperty": {"ignored": True},
        }
        if "serial" not in result:  # an ERROR result carries no data
            return answer
        now_ms = test.completed_ms or 0
        answer.update(
            {
                "testStartTime": _time(now_ms - 90_000, odd),
                "testEndTime": _time(now_ms, odd),
                "connectionStartTime": _time(now_ms - 60_000, odd),
                "connectionEndTime": _time(now_ms - 2_000, odd),
                "serialNumber": result["serial"],
                "meterTime": _meter_time(result["meter_ms"], result["offset"], odd),
                "statusEvents": ["Lid/terminal cover tamper"],
                "meterProperties": [{"name": "CT\\VT ratios", "value": "CT: 600:5 VT: 1:1"}],
            }
        )
        number = _grouped if odd else (lambda value: value)
        groups = [
            {
                "category": "Energy",
                "registerValues": [
                    {
                        "name": "Active Energy Import",
                        "value": number(result["import_kwh"]),
                        "units": "kWh",
                    },
                    {"name": "Active Energy Export", "value": number(2380181.0), "units": "kWh"},
                ],
            },
            {
                "category": "Instantaneous",
                "registerValues": [
                    {"name": "Total Active Power", "value": number(-1990.0), "units": "kW"}
                ],
            },
            {
                "category": "Miscellaneous",
                "registerValues": [{"name": "Firmware", "value": "B40", "units": ""}],
            },
        ]
        answer["registers" if odd else "registerValues"] = groups
        if params.get("surveyDays"):
            answer["surveyData"] = [
                {
                    "name": "kWh Import",
                    "units": "kWh",
                    "readings": [
                        {"timestamp": _time(ts, odd), "value": number(value)}
                        for ts, value in result["readings"]
                    ],
                },
                {
                    "name": "kvarh Q1",
                    "units": "kvarh",
                    "readings": [
                        {"timestamp": _time(ts, odd), "value": number(value / 3)}
                        for ts, value in result["readings"]
                    ],
                },
            ]
        return answer


# -- helpers -----------------------------------------------------------------------------------


def _midnight_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def _zulu(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(ts_ms: int, odd: bool) -> str:
    """The document's sample writes times without Z; its tables with."""
    text = _zulu(ts_ms)
    return text[:-1] if odd else text


def _meter_time(meter_ms: int, offset_s: int, odd: bool) -> str:
    clock = datetime.fromtimestamp(meter_ms // 1000, UTC)
    text = clock.strftime("%Y-%m-%dT%H:%M:%S")
    if odd:  # the sample's garbled form: "2019-01-02T03T04:02:15 +10s"
        text = clock.strftime("%Y-%m-%dT%HT%H:%M:%S")
    return f"{text} {offset_s:+d}s"


def _grouped(value: float) -> str:
    return f"{value:,.3f}"


def _search_time(value: str | None, name: str, *, required: bool) -> int | None:
    if value is None:
        if required:
            raise _Invalid(400, [f"{name} is required"])
        return None
    if not _SEARCH_TIME.match(value):
        raise _Invalid(400, [f"{name} must be in the form YYYY-MM-DDTHH:mm:ssZ"])
    return int(
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() * 1000
    )


def _count(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    if not value.isdigit():
        raise _Invalid(400, [f"{name} must be a non-negative integer"])
    return int(value)
