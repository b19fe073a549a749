"""A strict local stand-in for the MassCEC PTS Automated Reporting API (tests).

Strict means: whatever the real service would refuse, this refuses too. Rules, from
/work/shared/specs/pts-monthly-automated-reporting.txt and NOTES.md:
- Operations under `<prefix>/`: GetSystems and GetLastReading (GET `?fk_system=1000,2000`, or
  POST `{"systems": [{"fk_system": 1000}]}`), ARPostTest and ARPost (POST), GetSubmissionStatus
  (GET, optional `systems` body). Another path: 404; another method: 405.
- "Https requests": plain http to a host name other than loopback is answered 403 (the fake
  then plays the remote service; loopback http is how tests reach it, as the config allows).
- Every call needs `Ocp-Apim-Subscription-Key: <key>` and `Ocp-Apim-Trace: true`: a missing or
  wrong key is 400 "Bad API Key" (as the document says), a missing trace header 400.
- Bodies: `Content-Type: application/json`, one JSON object. ARPost/ARPostTest: `APIKey` equal to
  the key, `Notes` string or null, `systems` a non-empty list of `{fk_system, MeterValue,
  MeterDate "YYYY-MM-DDTHH:MM:SS", Notes}`; an unknown key, a wrong type or a system twice: 400.
- A system the organisation does not have, or an inactive one, gets an item with `Error` (and
  nothing is recorded for it).
- The reporting window (America/New_York): local midnight `days_before` days before the first of
  the month to local midnight `days_after` days after it, closed-open. Outside every window
  ARPost answers a per-system `Error` (nothing counted).
- Validation: Failed when MeterDate is outside the current window, MeterValue ≤ 0, below or equal
  to the last reading, or the energy since the last reading is above capacity × hours; or when
  a test asked for it (`fail_validation`). ARPostTest answers the result at once and saves
  nothing; ARPost's result shows in GetSubmissionStatus as Validating (0) for
  `validation_delay_secs` of the fake's clock, then Passed (1) / Failed (-1).
- Quota per system and window: `max_valid` (2) valid and `max_failed` (3) failed; a submission
  beyond either gets a per-system `Error` and is not recorded (`raise_quota`: the help desk).
- Last one in wins: GetSubmissionStatus shows each system's latest submission of the current
  window; when the window closes, a Passed latest submission becomes the last reading.
- The answer bodies of ARPost/ARPostTest are not documented: this fake answers a list of
  `{fk_system, Error}` (ARPostTest adds ValidationStatus and ValidationNotes), an assumption;
  with `answers="received"` it answers the document's words only, `Received Data` as text,
  with nothing per system (a client must not take that for a passed validation).
- MeterValue is stored with `stored_decimals` (1: every example in the document has one) and
  echoed so in GetSubmissionStatus and GetLastReading; validation sees the stored value, and
  EnergyProduced is the difference of stored values.
- "On the first upload of the Reporting Period the submission will be saved to an interim
  table": a submission shows in GetSubmissionStatus only `interim_delay_secs` after ARPost.
- "Maximum limit of 3 failed validation submissions per system": ARPostTest "will be run
  through Validation", so a failed test counts against the failed quota too (the reading
  that hurts a client most), and once that quota is used ARPostTest gets a per-system
  `Error` as well.

Failure injection (before any check, as a gateway in front would): fail_next(n, status, op=),
drop_next(op) (connection closed unanswered, nothing processed), lose_answer_next(op)
(processed, then the connection is closed: the client cannot know). Importable without pytest.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from tests.fakes.loopback import LoopbackServer, is_loopback_host

EASTERN = ZoneInfo("America/New_York")
OPERATIONS = ("GetSystems", "GetLastReading", "ARPostTest", "ARPost", "GetSubmissionStatus")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", re.ASCII)
_POST_KEYS = frozenset({"APIKey", "Notes", "systems"})
_READING_KEYS = frozenset({"fk_system", "MeterValue", "MeterDate", "Notes"})
#: (key `YYYY-MM`, open, close) of a reporting window.
_WindowT = tuple[str, datetime, datetime]


class _Invalid(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class FakeSystem:
    fk_system: int
    capacity_kw: float = 10.0
    system_id: str = ""
    name: str = "Test"
    active: bool = True
    #: The last reading in production (what GetLastReading answers).
    last_value: float | None = None
    last_date: str | None = None
    last_reported: str | None = None
    last_period_end: str | None = None
    last_energy: float | None = None


@dataclass
class Submission:
    fk_system: int
    window: str
    value: float
    meter_date: str
    notes: str | None
    passed: bool
    validation_notes: str
    submitted_at: float
    reported: str


@dataclass(frozen=True)
class Call:
    operation: str
    method: str
    status: int
    query: str
    body: Any


@dataclass
class _Quota:
    valid: int = 0
    failed: int = 0


@dataclass
class FakePts(LoopbackServer):
    """Strict fake PTS on loopback; `async with` starts and stops it (safe to exit twice)."""

    key: str
    systems: dict[int, FakeSystem]
    clock: Callable[[], float] = time.time
    prefix: str = "/ptsstaging"
    days_before: int = 5
    days_after: int = 5
    validation_delay_secs: float = 600.0
    max_valid: int = 2
    max_failed: int = 3
    stored_decimals: int = 1
    interim_delay_secs: float = 0.0
    answers: str = "per_system"
    host: str = "127.0.0.1"
    port: int = 0
    #: Every answered call, in order.
    calls: list[Call] = field(default_factory=list)
    #: Every recorded ARPost submission, in order.
    submissions: list[Submission] = field(default_factory=list)
    #: ARPostTest readings validated (never saved).
    tests: list[dict[str, Any]] = field(default_factory=list)
    _quota: dict[tuple[int, str], _Quota] = field(default_factory=dict)
    _raised: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)
    _forced: dict[int, str] = field(default_factory=dict)
    _settled: set[str] = field(default_factory=set)
    _fail_next: list[tuple[int, str | None, bytes | None, str]] = field(default_factory=list)
    _drop: Counter[str] = field(default_factory=Counter)
    _lose: Counter[str] = field(default_factory=Counter)
    _runner: web.AppRunner | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- control --------------------------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        status: int = 500,
        *,
        operation: str | None = None,
        body: bytes | None = None,
        content_type: str = "text/html",
    ) -> None:
        """Answer the next `n` calls (of `operation`, or any) with `status` (and a raw `body`
        of `content_type`, e.g. a captive portal's page with 200), processing nothing."""
        self._fail_next.extend([(status, operation, body, content_type)] * n)

    def drop_next(self, operation: str) -> None:
        """Close the connection of the next `operation` call without processing it."""
        self._drop[operation] += 1

    def lose_answer_next(self, operation: str) -> None:
        """Process the next `operation` call, then close the connection unanswered."""
        self._lose[operation] += 1

    def fail_validation(self, fk_system: int, notes: str) -> None:
        """The next validation (ARPostTest or ARPost) of `fk_system` fails with `notes`."""
        self._forced[fk_system] = notes

    def raise_quota(self, fk_system: int, window: str, *, valid: int, failed: int) -> None:
        """What the help desk does on a special request."""
        self._raised[(fk_system, window)] = (valid, failed)

    # -- observation ----------------------------------------------------------------------------

    def count(self, operation: str) -> int:
        return sum(1 for call in self.calls if call.operation == operation)

    def submitted(self, fk_system: int) -> list[Submission]:
        return [s for s in self.submissions if s.fk_system == fk_system]

    def window_at(self, when: float) -> _WindowT | None:
        """(key `YYYY-MM`, open, close) of the window open at epoch `when`, if any."""
        now = datetime.fromtimestamp(when, EASTERN)
        month = date(now.year, now.month, 1)
        previous = (month - timedelta(days=1)).replace(day=1)
        for first in (month, previous):
            following = (first + timedelta(days=32)).replace(day=1)
            opens = _midnight(following - timedelta(days=self.days_before))
            closes = _midnight(following + timedelta(days=self.days_after))
            if opens <= now < closes:
                return f"{first.year:04d}-{first.month:02d}", opens, closes
        return None

    # -- HTTP -----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        operation = request.path.removeprefix(self.prefix + "/")
        raw = await request.read()
        if self._drop[operation]:
            self._drop[operation] -= 1
            self._close(request)
            return web.Response(status=500)
        injected = self._injected(operation)
        if injected is not None:
            status, raw_answer, content_type = injected
            self.calls.append(Call(operation, request.method, status, request.query_string, None))
            return web.Response(status=status, body=raw_answer, content_type=content_type)
        status, payload = self._answer(request, operation, raw)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        self.calls.append(Call(operation, request.method, status, request.query_string, body))
        if self._lose[operation]:
            self._lose[operation] -= 1
            self._close(request)
        if status == 200 and self.answers == "received" and operation in ("ARPost", "ARPostTest"):
            return web.Response(status=200, text="Received Data")
        return web.json_response(payload, status=status)

    @staticmethod
    def _close(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.close()

    def _injected(self, operation: str) -> tuple[int, bytes, str] | None:
        for index, (status, only, body, content_type) in enumerate(self._fail_next):
            if only is None or only == operation:
                del self._fail_next[index]
                if body is None:
                    return (
                        status,
                        json.dumps({"message": f"injected {status}"}).encode(),
                        ("application/json"),
                    )
                return status, body, content_type
        return None

    def _answer(self, request: web.Request, operation: str, raw: bytes) -> tuple[int, Any]:
        try:
            if not request.secure and not is_loopback_host(request.host):
                # "GET and POST Https requests": plain http to the real host is refused.
                raise _Invalid(403, "HTTPS required")
            if not request.path.startswith(self.prefix + "/") or operation not in OPERATIONS:
                raise _Invalid(404, "Resource not found")
            allowed = {
                "GetSystems": ("GET", "POST"),
                "GetLastReading": ("GET", "POST"),
                "ARPostTest": ("POST",),
                "ARPost": ("POST",),
                "GetSubmissionStatus": ("GET",),
            }[operation]
            if request.method not in allowed:
                raise _Invalid(405, "Method not allowed")
            if request.headers.get("Ocp-Apim-Subscription-Key") != self.key:
                raise _Invalid(400, "Bad API Key")
            if request.headers.get("Ocp-Apim-Trace") != "true":
                raise _Invalid(400, "Ocp-Apim-Trace: true header required")
            self._settle()
            if operation in ("GetSystems", "GetLastReading"):
                wanted = self._wanted(request, raw)
                answer = self._systems if operation == "GetSystems" else self._last_readings
                return 200, answer(wanted)
            if operation == "GetSubmissionStatus":
                body = self._json(request, raw) if raw.strip() else None
                return 200, self._status(self._systems_of(body) if body is not None else None)
            return 200, self._post(self._json(request, raw), test=operation == "ARPostTest")
        except _Invalid as exc:
            return exc.status, {"message": exc.reason}

    @staticmethod
    def _json(request: web.Request, raw: bytes) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise _Invalid(415, "Content-Type must be application/json")
        try:
            data = json.loads(raw, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Invalid(400, f"invalid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise _Invalid(400, "body must be one JSON object")
        return data

    @staticmethod
    def _systems_of(body: dict[str, Any]) -> list[int]:
        if set(body) != {"systems"} or not isinstance(body["systems"], list):
            raise _Invalid(400, 'body must be {"systems": [{"fk_system": N}, ...]}')
        wanted: list[int] = []
        for item in body["systems"]:
            if not isinstance(item, dict) or set(item) != {"fk_system"}:
                raise _Invalid(400, "each system is {fk_system: N}")
            fk = item["fk_system"]
            if not isinstance(fk, int) or isinstance(fk, bool):
                raise _Invalid(400, "fk_system must be an integer")
            wanted.append(fk)
        return wanted

    def _wanted(self, request: web.Request, raw: bytes) -> list[int] | None:
        if request.method == "POST":
            return self._systems_of(self._json(request, raw))
        if raw.strip():
            raise _Invalid(400, "GET takes ?fk_system=, not a body")
        text = request.query.get("fk_system")
        if text is None:
            return None
        try:
            return [int(part) for part in text.split(",")]
        except ValueError as exc:
            raise _Invalid(400, "fk_system must be integers separated by commas") from exc

    def _active(self, fk: int) -> FakeSystem | None:
        system = self.systems.get(fk)
        return system if system is not None and system.active else None

    def _selected(self, wanted: list[int] | None) -> list[int]:
        return list(self.systems) if wanted is None else wanted

    def _systems(self, wanted: list[int] | None) -> list[dict[str, Any]]:
        items = []
        for fk in self._selected(wanted):
            system = self._active(fk)
            if system is None:
                items.append(_unknown(fk))
                continue
            items.append(
                {
                    "fk_system": fk,
                    "SystemID": system.system_id or f"NFG-NN100-{fk:05d}",
                    "SystemName": system.name,
                    "capacity": system.capacity_kw,
                    "Error": None,
                }
            )
        return items

    def _last_readings(self, wanted: list[int] | None) -> list[dict[str, Any]]:
        items = []
        for fk in self._selected(wanted):
            system = self._active(fk)
            if system is None:
                items.append(_unknown(fk))
                continue
            items.append(
                {
                    "fk_system": fk,
                    "SystemID": system.system_id or f"NFG-NN100-{fk:05d}",
                    "SystemName": system.name,
                    "MeterValue": system.last_value,
                    "MeterDate": system.last_date,
                    "DateTimeReported": system.last_reported,
                    "PeriodEndDate": system.last_period_end,
                    "EnergyProduced": system.last_energy,
                    "IsEstimated": False,
                    "Notes": "",
                    "Error": None,
                }
            )
        return items

    def _status(self, wanted: list[int] | None) -> list[dict[str, Any]]:
        window = self.window_at(self.clock())
        if window is None:
            return []
        latest: dict[int, Submission] = {}
        for submission in self.submissions:
            shown = self.clock() >= submission.submitted_at + self.interim_delay_secs
            if submission.window == window[0] and shown:
                latest[submission.fk_system] = submission
        items = []
        for fk, sub in latest.items():
            if wanted is not None and fk not in wanted:
                continue
            system = self.systems[fk]
            done = self.clock() >= sub.submitted_at + self.validation_delay_secs
            items.append(
                {
                    "fk_system": fk,
                    "SystemID": system.system_id or f"NFG-NN100-{fk:05d}",
                    "SystemName": system.name,
                    "MeterValue": sub.value,
                    "MeterDate": sub.meter_date,
                    "DateTimeReported": sub.reported,
                    "PeriodEndDate": _period_end(sub.window),
                    "EnergyProduced": None,
                    "IsEstimated": False,
                    "Notes": sub.notes or "",
                    "ValidationNotes": sub.validation_notes if done else "",
                    "ValidationStatus": (1 if sub.passed else -1) if done else 0,
                }
            )
        return items

    def _post(self, body: dict[str, Any], *, test: bool) -> list[dict[str, Any]]:
        unknown = sorted(set(body) - _POST_KEYS)
        if unknown:
            raise _Invalid(400, f"unknown field(s): {', '.join(unknown)}")
        if body.get("APIKey") != self.key:
            raise _Invalid(400, "Bad API Key")
        if body.get("Notes") is not None and not isinstance(body.get("Notes"), str):
            raise _Invalid(400, "Notes must be a string or null")
        readings = body.get("systems")
        if not isinstance(readings, list) or not readings:
            raise _Invalid(400, "systems must be a non-empty list")
        seen: set[int] = set()
        parsed = []
        for item in readings:
            parsed.append(_reading(item))
            if parsed[-1][0] in seen:
                raise _Invalid(400, f"fk_system {parsed[-1][0]} twice")
            seen.add(parsed[-1][0])
        now = self.clock()
        window = self.window_at(now)
        answers = []
        for fk, raw_value, meter_date, notes in parsed:
            value = self._stored(raw_value)
            system = self._active(fk)
            if system is None:
                answers.append({"fk_system": fk, "Error": "System not found or not active"})
                continue
            if window is None:
                answers.append({"fk_system": fk, "Error": "The reporting window is closed"})
                continue
            quota = self._quota.setdefault((fk, window[0]), _Quota())
            limits = self._raised.get((fk, window[0]), (self.max_valid, self.max_failed))
            if test and quota.failed >= limits[1]:
                answers.append(
                    {"fk_system": fk, "Error": f"Maximum of {limits[1]} failed submissions reached"}
                )
                continue
            problem = self._validate(system, value, meter_date, window)
            if test:
                self.tests.append({"fk_system": fk, "MeterValue": value, "MeterDate": meter_date})
                if problem:
                    quota.failed += 1  # "3 failed validation submissions": tests too
                answers.append(
                    {
                        "fk_system": fk,
                        "Error": None,
                        "ValidationStatus": -1 if problem else 1,
                        "ValidationNotes": problem or "",
                    }
                )
                continue
            refusal = None
            if quota.valid >= limits[0]:
                refusal = f"Maximum of {limits[0]} valid submissions reached"
            elif quota.failed >= limits[1]:
                refusal = f"Maximum of {limits[1]} failed submissions reached"
            if refusal is not None:
                answers.append({"fk_system": fk, "Error": refusal})
                continue
            if problem:
                quota.failed += 1
            else:
                quota.valid += 1
            reported = datetime.fromtimestamp(now, EASTERN).replace(tzinfo=None)
            self.submissions.append(
                Submission(
                    fk,
                    window[0],
                    value,
                    meter_date,
                    notes,
                    problem is None,
                    problem or "",
                    now,
                    reported.isoformat(timespec="seconds"),
                )
            )
            answers.append({"fk_system": fk, "Error": None})
        return answers

    def _stored(self, value: float) -> float:
        """MeterValue as PTS keeps it: `stored_decimals` decimals (half up)."""
        step = Decimal(1).scaleb(-self.stored_decimals)
        return float(Decimal(repr(value)).quantize(step, rounding=ROUND_HALF_UP))

    def failed_quota(self, fk_system: int, window: str) -> int:
        """Failed validations PTS counted for a system in a window (tests included)."""
        return self._quota.get((fk_system, window), _Quota()).failed

    def _validate(
        self, system: FakeSystem, value: float, meter_date: str, window: _WindowT
    ) -> str | None:
        forced = self._forced.pop(system.fk_system, None)
        if forced is not None:
            return forced
        when = datetime.fromisoformat(meter_date).replace(tzinfo=EASTERN)
        if not window[1] <= when < window[2]:
            return "MeterDate is outside the current reporting window"
        if value <= 0:
            return "MeterValue must be greater than 0"
        if system.last_value is not None:
            if value < system.last_value:
                return f"MeterValue is below the last reading ({system.last_value})"
            if value == system.last_value:
                return f"MeterValue equals the last reading ({system.last_value})"
            if system.last_date is not None:
                last = datetime.fromisoformat(system.last_date).replace(tzinfo=EASTERN)
                hours = (when - last).total_seconds() / 3600
                if value - system.last_value > system.capacity_kw * hours:
                    return "Production is above the system capacity for the period"
        return None

    def _settle(self) -> None:
        """Windows that closed: each system's latest Passed submission goes to production."""
        now = self.clock()
        windows = {submission.window for submission in self.submissions}
        for key in sorted(windows - self._settled):
            year, month = (int(part) for part in key.split("-"))
            following = (date(year, month, 1) + timedelta(days=32)).replace(day=1)
            closes = _midnight(following + timedelta(days=self.days_after))
            if now < closes.timestamp():
                continue
            self._settled.add(key)
            latest: dict[int, Submission] = {}
            for submission in self.submissions:
                if submission.window == key:
                    latest[submission.fk_system] = submission
            for fk, submission in latest.items():
                if not submission.passed:
                    continue
                system = self.systems[fk]
                system.last_energy = (
                    None
                    if system.last_value is None
                    else self._stored(submission.value - system.last_value)
                )
                system.last_value = submission.value
                system.last_date = submission.meter_date
                system.last_reported = submission.reported
                system.last_period_end = _period_end(key)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=EASTERN)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _unknown(fk: int) -> dict[str, Any]:
    return {"fk_system": fk, "SystemID": None, "SystemName": None, "Error": "System not found"}


def _period_end(window: str) -> str:
    year, month = (int(part) for part in window.split("-"))
    last = (date(year, month, 1) + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    return f"{last.isoformat()}T00:00:00"


def _reading(item: object) -> tuple[int, float, str, str | None]:
    if not isinstance(item, dict):
        raise _Invalid(400, "each reading is an object")
    unknown = sorted(set(item) - _READING_KEYS)
    missing = sorted({"fk_system", "MeterValue", "MeterDate"} - set(item))
    if unknown or missing:
        raise _Invalid(400, f"reading fields: unknown {unknown}, missing {missing}")
    fk, value, meter_date, notes = (
        item["fk_system"],
        item["MeterValue"],
        item["MeterDate"],
        item.get("Notes"),
    )
    if not isinstance(fk, int) or isinstance(fk, bool):
        raise _Invalid(400, "fk_system must be an integer")
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise _Invalid(400, "MeterValue must be a number")
    if not isinstance(meter_date, str) or not _DATE.fullmatch(meter_date):
        raise _Invalid(400, "MeterDate must look like 2019-11-30T23:59:42")
    try:
        datetime.fromisoformat(meter_date)
    except ValueError as exc:
        raise _Invalid(400, f"MeterDate is not a date: {exc}") from exc
    if notes is not None and not isinstance(notes, str):
        raise _Invalid(400, "Notes must be a string or null")
    return fk, float(value), meter_date, notes
