"""The five PTS Automated Reporting operations over one aiohttp session, and nothing else.

Every call carries `Ocp-Apim-Subscription-Key` and `Ocp-Apim-Trace: true`; ARPost and
ARPostTest repeat the key as `APIKey` in the body, as the document shows. GetSystems and
GetLastReading go as `GET ?fk_system=1000,2000` or `POST {"systems": [...]}` (config);
GetSubmissionStatus is a GET with a `systems` body, as specified. Answers are parsed
defensively (keys case-insensitive; the answer bodies of ARPost/ARPostTest are not
documented): what cannot be read is treated as "no per-system information", never as success
of validation. The key is never logged, never put into an error, never stored.

Failures become one exception type, PtsCallError, classified by gateway.net.policy. PTS
answers 400 for a bad API key (ARPostTest: "Bad Request"), so 400 is a credentials problem
here except for ARPostTest, where it rejects the reading.

A success must look like one before anything counts: GetSystems, GetLastReading and
GetSubmissionStatus answer "a JSON object array"; ARPost and ARPostTest "Received Data" (JSON
or text). A web page (a captive portal, a proxy's login page), or a query answer that is no
array, is a RETRY, counted in `unexpected_answers` (an ARPost then may have arrived: it is
resolved by GetSubmissionStatus like a timeout). Every call is counted per Eastern day
(`calls_today`): the document warns that a key "may be invalidated for abuse".
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import aiohttp
import yarl
from pydantic import SecretStr

from gateway.net.policy import (
    TRANSPORT_ERRORS,
    Outcome,
    Verdict,
    classify_exception,
    classify_response,
    is_web_page,
)
from gateway.net.session import KeptSession, SessionFactory, read_limited
from gateway.uplinks.pts.window import eastern_date

#: Validation statuses of GetSubmissionStatus.
VALIDATING: Final = 0
PASSED: Final = 1
FAILED: Final = -1

#: Bytes of an answer read at most (a garbage answer must not eat the Pi's memory).
MAX_ANSWER_BYTES: Final = 1 << 20


class PtsCallError(Exception):
    """A PTS call without a usable answer. `kind`: retry (transient), auth (a human must fix
    the key), rejected (this request is refused). `maybe_sent`: the request may have reached
    PTS (a POST whose outcome is unknown)."""

    def __init__(self, operation: str, verdict: Verdict, *, kind: str, maybe_sent: bool) -> None:
        super().__init__(f"{operation}: {verdict.detail}")
        self.operation = operation
        self.verdict = verdict
        self.kind = kind
        self.maybe_sent = maybe_sent

    @property
    def status(self) -> int | None:
        return self.verdict.status


@dataclass(frozen=True, slots=True)
class SystemInfo:
    fk_system: int
    system_id: str | None
    name: str | None
    capacity_kw: float | None
    error: str | None


@dataclass(frozen=True, slots=True)
class ReadingInfo:
    """A GetLastReading or GetSubmissionStatus entry (status and notes only in the latter)."""

    fk_system: int
    value_kwh: float | None
    meter_date: str | None
    period_end: str | None
    status: int | None
    notes: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class PostAnswer:
    """What an ARPost/ARPostTest answer says about one system (often nothing: undocumented)."""

    fk_system: int
    error: str | None
    status: int | None
    notes: str | None


#: Keys under which a list of per-system objects is also accepted.
_WRAPPERS: Final = ("systems", "value", "data", "results")


def _lower(item: Mapping[str, Any]) -> dict[str, Any]:
    return {str(key).lower(): value for key, value in item.items()}


def _items(body: object) -> list[dict[str, Any]]:
    """The per-system objects of an answer: a list, or a list under `systems`/`value`/`data`."""
    if isinstance(body, dict):
        lowered = _lower(body)
        for key in _WRAPPERS:
            if isinstance(lowered.get(key), list):
                body = lowered[key]
                break
        else:
            body = [body] if "fk_system" in lowered else []
    if not isinstance(body, list):
        return []
    return [_lower(item) for item in body if isinstance(item, dict)]


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value)
    text = text.strip()
    return text[:1000] or None


def _by_system(body: object) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for item in _items(body):
        fk = _int(item.get("fk_system"))
        if fk is not None:
            found[fk] = item
    return found


class PtsClient:
    """One PTS API root (`base_url + path_prefix`) and key; `aclose()` is safe twice."""

    def __init__(
        self,
        api_root: str,
        key: SecretStr,
        *,
        timeout_secs: float = 30.0,
        query_method: str = "GET",
        session_factory: SessionFactory | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._root = api_root.rstrip("/")
        self._key = key
        self._query_method = query_method
        self._sessions = KeptSession(timeout_secs, factory=session_factory)
        self._now = now
        #: Calls made, by operation (for status and tests of "few calls").
        self.calls: dict[str, int] = {}
        #: Calls made on one Eastern day, by operation (health facts; restored at start).
        self.calls_day: str | None = None
        self.calls_today: dict[str, int] = {}
        #: 2xx answers that were not the documented shape (retried).
        self.unexpected_answers = 0

    async def aclose(self) -> None:
        await self._sessions.close()

    def _open(self) -> aiohttp.ClientSession:
        return self._sessions.get()

    # -- operations -------------------------------------------------------------------------

    async def get_systems(self, systems: Sequence[int]) -> dict[int, SystemInfo]:
        """The organisation's active systems among `systems` (absent or `Error`: not active)."""
        body = await self._query("GetSystems", systems)
        return {
            fk: SystemInfo(
                fk,
                _text(item.get("systemid")),
                _text(item.get("systemname")),
                _float(item.get("capacity")),
                _text(item.get("error")),
            )
            for fk, item in _by_system(body).items()
        }

    async def get_last_reading(self, systems: Sequence[int]) -> dict[int, ReadingInfo]:
        return _readings(await self._query("GetLastReading", systems))

    async def submission_status(self, systems: Sequence[int]) -> dict[int, ReadingInfo]:
        """Status of this window's submissions (GET with a `systems` body, as specified)."""
        body = await self._call("GetSubmissionStatus", "GET", body=_systems_body(systems))
        return _readings(body)

    async def post_test(
        self, readings: Iterable[Mapping[str, object]], notes: str | None
    ) -> dict[int, PostAnswer]:
        """ARPostTest: validation without saving (costs no quota)."""
        return _answers(
            await self._call("ARPostTest", "POST", body=self._post_body(readings, notes))
        )

    async def post(
        self, readings: Iterable[Mapping[str, object]], notes: str | None
    ) -> dict[int, PostAnswer]:
        """ARPost: the submission that counts (validated, added to production at window end)."""
        return _answers(await self._call("ARPost", "POST", body=self._post_body(readings, notes)))

    # -- HTTP -------------------------------------------------------------------------------

    def _post_body(
        self, readings: Iterable[Mapping[str, object]], notes: str | None
    ) -> dict[str, object]:
        return {
            "APIKey": self._key.get_secret_value(),
            "Notes": notes,
            "systems": [dict(reading) for reading in readings],
        }

    async def _query(self, operation: str, systems: Sequence[int]) -> object:
        if self._query_method == "POST":
            return await self._call(operation, "POST", body=_systems_body(systems))
        query = "fk_system=" + ",".join(str(fk) for fk in systems)
        return await self._call(operation, "GET", query=query)

    async def _call(
        self,
        operation: str,
        method: str,
        *,
        query: str | None = None,
        body: Mapping[str, object] | None = None,
    ) -> object:
        url = yarl.URL(f"{self._root}/{operation}")
        if query is not None:
            url = url.with_query(query)
        headers = {
            "Ocp-Apim-Subscription-Key": self._key.get_secret_value(),
            "Ocp-Apim-Trace": "true",
            "Accept": "application/json",
        }
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body, allow_nan=False).encode()
        self._count(operation)
        session = self._open()
        try:
            async with session.request(
                method, url, data=data, headers=headers, allow_redirects=False
            ) as response:
                raw = await read_limited(response, MAX_ANSWER_BYTES)
                status, answer_headers = response.status, response.headers
                content_type = response.content_type
        except TRANSPORT_ERRORS as exc:
            failed = classify_exception(exc)  # decides whether it may have arrived
            maybe_sent = method == "POST" and failed.maybe_arrived
            raise PtsCallError(operation, failed, kind="retry", maybe_sent=maybe_sent) from None
        verdict = classify_response(status, answer_headers, _scrub(raw, self._key))
        if verdict.outcome is not Outcome.OK:
            raise PtsCallError(
                operation,
                verdict,
                kind=_kind(operation, verdict),
                maybe_sent=method == "POST" and verdict.outcome is Outcome.RETRY,
            )
        acknowledgement = operation in ("ARPost", "ARPostTest")
        if is_web_page(content_type, raw):
            self._unexpected(operation, status, "a web page, not PTS", maybe_sent=method == "POST")
        if acknowledgement and not raw.strip():
            return None
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # nested beyond the parser's depth: not JSON to us
            if acknowledgement:
                return None  # "200: Received Data" may come as text
            self._unexpected(operation, status, "answer is not JSON", maybe_sent=False)
        if not acknowledgement and not _is_array(body):
            self._unexpected(
                operation, status, "answer is not a JSON object array", maybe_sent=False
            )
        return body

    def _unexpected(self, operation: str, status: int, why: str, *, maybe_sent: bool) -> NoReturn:
        """A 2xx that is not the documented answer: counted, and retried."""
        self.unexpected_answers += 1
        raise PtsCallError(
            operation,
            Verdict(Outcome.RETRY, status, None, f"HTTP {status}: {why}"),
            kind="retry",
            maybe_sent=maybe_sent,
        )

    def _count(self, operation: str) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1
        day = eastern_day(self._now())
        if day != self.calls_day:
            self.calls_day, self.calls_today = day, {}
        self.calls_today[operation] = self.calls_today.get(operation, 0) + 1

    def restore_calls(self, day: str, calls: Mapping[str, int]) -> None:
        """Continue today's count after a restart (what the uplink saved)."""
        if day == eastern_day(self._now()):
            self.calls_day = day
            for operation, count in calls.items():
                self.calls_today[operation] = self.calls_today.get(operation, 0) + count


def eastern_day(ts_s: float) -> str:
    """The Eastern calendar day of epoch seconds `ts_s` (PTS's days)."""
    return eastern_date(int(ts_s * 1000)).isoformat()


def _is_array(body: object) -> bool:
    """The documented "JSON object array", or one wrapped under a known key."""
    if isinstance(body, list):
        return True
    if isinstance(body, dict):
        lowered = _lower(body)
        return "fk_system" in lowered or any(isinstance(lowered.get(k), list) for k in _WRAPPERS)
    return False


def _kind(operation: str, verdict: Verdict) -> str:
    if verdict.outcome is Outcome.AUTH:
        return "auth"
    if verdict.outcome is Outcome.REJECT:
        return "auth" if verdict.status == 400 and operation != "ARPostTest" else "rejected"
    return "retry"


def _scrub(raw: bytes, key: SecretStr) -> bytes:
    """An answer echoing our request must not carry the key into logs and health."""
    secret = key.get_secret_value().encode()
    return raw.replace(secret, b"**********") if secret else raw


def _systems_body(systems: Sequence[int]) -> dict[str, object]:
    return {"systems": [{"fk_system": fk} for fk in systems]}


def _readings(body: object) -> dict[int, ReadingInfo]:
    return {
        fk: ReadingInfo(
            fk,
            _float(item.get("metervalue")),
            _text(item.get("meterdate")),
            _text(item.get("periodenddate")),
            _int(item.get("validationstatus")),
            _text(item.get("validationnotes")),
            _text(item.get("error")),
        )
        for fk, item in _by_system(body).items()
    }


def _answers(body: object) -> dict[int, PostAnswer]:
    return {
        fk: PostAnswer(
            fk,
            _text(item.get("error")),
            _int(item.get("validationstatus")),
            _text(item.get("validationnotes")),
        )
        for fk, item in _by_system(body).items()
    }
