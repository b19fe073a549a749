"""A strict local stand-in for the Locus Energy v3 API (tests).

Strict means: whatever the real service documents as refused, this refuses too. Rules, from
/work/shared/specs/locus-energy-v3-api.txt and NOTES.md:
- `POST /oauth/token`, form-encoded (else 400): grants `password` (client id + secret, user
  name + password: access and refresh token), `client_credentials` (access token only) and
  `refresh_token` (a new access token; the refresh token stays valid). A wrong client: 401
  `invalid_client`; a wrong user or refresh token: 400 `invalid_grant`; a grant the account
  may not use: 400 `unsupported_grant_type`. Access tokens expire after `expires_in` seconds
  of the fake's clock.
- Every `/v3` call needs `Authorization: Bearer <valid token>`, else 401.
- One request at a time per account (the documented default): a request arriving while
  another of the same account is being answered gets 429 `{"message": "Too many requests",
  "statusCode": 429}`. Token calls count too.
- With `Accept-Encoding: gzip` the answer is gzip-compressed (`Content-Encoding: gzip`).
- `GET /v3/partners/{id}/components[?nodeId=]` (another partner: 403; `%` is a wildcard),
  `GET /v3/components/{id}/dataavailable` (unknown: 404),
  `GET /v3/components/{id}/data?fields=&tz=&gran=[&start=&end=]`: every argument required
  (start/end not with `gran=latest`); every field must be one of the component's shortNames
  and offer that granularity (else 400); `start < end`, and `end - start` strictly below the
  span limit of the granularity (1min < 5 days; 5min/15min/hourly < 31 days; daily < 1 year),
  else 400. Timestamps are local to `tz`, answered with their offset; `ts` is the START of an
  interval, intervals with start >= `start` and < `end` are returned, the one in progress with
  what was measured so far, none that has not begun; a field without data is left out.
  `gran=latest` returns one point: the newest complete 5-minute interval.
- Data: per component, energy per minute follows a fixed pattern (`energy_wh`), so sums over
  any interval are exact and agree across granularities; `W_avg` is the interval's mean power.
  Before `since` and inside `gaps` there is no data. Every data object carries an extra field
  the client must ignore (the API adds fields within a version).

Failure injection happens before any check except the concurrency rule: fail_next, outage /
restore, slow. Importable without pytest.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from tests.fakes.loopback import LoopbackServer

MINUTE_MS = 60_000
#: Span limits written out here on purpose (not imported from the gateway).
SPAN_LIMIT = {
    "1min": timedelta(days=5),
    "5min": timedelta(days=31),
    "15min": timedelta(days=31),
    "hourly": timedelta(days=31),
    "daily": timedelta(days=365),
}
FIXED_STEP = {
    "1min": timedelta(minutes=1),
    "5min": timedelta(minutes=5),
    "15min": timedelta(minutes=15),
    "hourly": timedelta(hours=1),
    "daily": timedelta(days=1),
}
ALL_GRANS = ["latest", "1min", "5min", "15min", "hourly", "daily", "monthly", "yearly"]
TOO_MANY = {"message": "Too many requests", "statusCode": 429}
PATTERN = 12  # minutes


def energy_wh(scale: int, start_min: int, end_min: int) -> int:
    """Energy of the minutes [start_min, end_min) (epoch minutes): scale * (1 + m mod 12) each."""

    def upto(n: int) -> int:
        whole, rest = divmod(n, PATTERN)
        return whole * PATTERN * (PATTERN + 1) // 2 + rest * (rest + 1) // 2

    if end_min <= start_min:
        return 0
    return scale * (upto(end_min) - upto(start_min))


@dataclass
class Component:
    id: int
    node_id: str
    partner_id: int
    #: Wh per minute factor of the energy pattern.
    scale: int = 1
    #: shortNames offered (W_avg, Wh_sum; W_max is listed but never has data here).
    fields: tuple[str, ...] = ("W_avg", "W_max", "Wh_sum")
    granularities: tuple[str, ...] = tuple(ALL_GRANS)
    since_ms: int = 0
    #: [start, end) epoch ms ranges without data (a logger that was offline).
    gaps: list[tuple[int, int]] = field(default_factory=list)

    def measured_minutes(self, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
        """Minute ranges inside [start, end) that have data."""
        ranges = [(max(start_ms, self.since_ms), end_ms)]
        for gap_start, gap_end in self.gaps:
            cut: list[tuple[int, int]] = []
            for a, b in ranges:
                if gap_end <= a or gap_start >= b:
                    cut.append((a, b))
                    continue
                if a < gap_start:
                    cut.append((a, gap_start))
                if gap_end < b:
                    cut.append((gap_end, b))
            ranges = cut
        return [(a // MINUTE_MS, b // MINUTE_MS) for a, b in ranges if a < b]


@dataclass(frozen=True)
class Seen:
    """One answered request (no secrets)."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    gzipped: bool
    grant: str | None = None


class _Refused(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body


def _error(status: int, message: str) -> _Refused:
    return _Refused(status, {"statusCode": status, "message": message})


class FakeLocus(LoopbackServer):
    """Strict fake Locus API on loopback; `async with` starts and stops it."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        username: str | None,
        password: str | None,
        partner_id: int,
        components: list[Component],
        expires_in: int = 3600,
        now: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.username = username
        self.password = password
        self.partner_id = partner_id
        self.components = {c.id: c for c in components}
        self.expires_in = expires_in
        self.now = now
        self.host = host
        self.port = port
        self._access: dict[str, float] = {}  # token -> expiry (fake clock, epoch s)
        self._refresh: set[str] = set()
        self._in_flight = 0
        self.max_in_flight = 0
        self.history: list[Seen] = []
        self.statuses: Counter[int] = Counter()
        self.grants: Counter[str] = Counter()
        self._fail_next: list[int] = []
        self._pages = 0
        self._outage: int | None = None
        self._delay = 0.0
        self._runner: web.AppRunner | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- control --------------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503) -> None:
        self._fail_next.extend([status] * n)

    def page_next(self, n: int) -> None:
        """Answer the next `n` data calls 200 with a web page (a captive portal, a proxy)."""
        self._pages += n

    def outage(self, status: int = 503) -> None:
        """Answer every request with `status` until restore()."""
        self._outage = status

    def restore(self) -> None:
        self._outage = None

    def slow(self, seconds: float) -> None:
        """Delay every answer (real seconds): overlapping requests become visible."""
        self._delay = seconds

    def expire_tokens(self) -> None:
        """Every access token issued so far stops working now (refresh tokens stay valid)."""
        self._access.clear()

    def data_requests(self, gran: str | None = None) -> list[Seen]:
        return [
            s
            for s in self.history
            if s.path.endswith("/data") and (gran is None or s.query.get("gran") == gran)
        ]

    # -- HTTP -----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        grant: str | None = None
        try:
            body = await request.read()
            if self._in_flight > 1:  # one account here: the second concurrent request
                raise _Refused(429, TOO_MANY)
            if self._delay:
                await asyncio.sleep(self._delay)
            if self._fail_next:
                status = self._fail_next.pop(0)
                raise _error(status, "injected failure")
            if self._outage is not None:
                raise _error(self._outage, "service unavailable")
            if self._pages and request.path.endswith("/data"):
                self._pages -= 1
                return web.Response(
                    text="<html>Sign in to the WiFi</html>", content_type="text/html"
                )
            if request.path == "/oauth/token":
                grant, payload = self._token(request, body)
            else:
                payload = self._api(request)
            status = 200
        except _Refused as exc:
            status, payload = exc.status, exc.body
        finally:
            self._in_flight -= 1
        raw = json.dumps(payload).encode()
        gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
        headers = {"Content-Type": "application/json"}
        if gzipped:
            raw = gzip.compress(raw)
            headers["Content-Encoding"] = "gzip"
        self.statuses[status] += 1
        self.history.append(
            Seen(request.method, request.path, dict(request.query), status, gzipped, grant)
        )
        return web.Response(status=status, body=raw, headers=headers)

    # -- OAuth ----------------------------------------------------------------------------------

    def _token(self, request: web.Request, body: bytes) -> tuple[str, dict[str, Any]]:
        if request.method != "POST":
            raise _error(405, "method not allowed")
        if request.content_type != "application/x-www-form-urlencoded":
            raise _Refused(400, {"error": "invalid_request"})
        from urllib.parse import parse_qs

        form = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
        grant = form.get("grant_type", "")
        if (form.get("client_id"), form.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            raise _Refused(401, {"error": "invalid_client"})
        refresh: str | None = None
        if grant == "password":
            if self.username is None:
                raise _Refused(400, {"error": "unsupported_grant_type"})
            if (form.get("username"), form.get("password")) != (self.username, self.password):
                raise _Refused(400, {"error": "invalid_grant"})
            refresh = secrets.token_hex(16)
            self._refresh.add(refresh)
        elif grant == "client_credentials":
            if self.username is not None:
                raise _Refused(400, {"error": "unsupported_grant_type"})
        elif grant == "refresh_token":
            if form.get("refresh_token") not in self._refresh:
                raise _Refused(400, {"error": "invalid_grant"})
        else:
            raise _Refused(400, {"error": "unsupported_grant_type"})
        access = secrets.token_hex(16)
        issued = self.now()
        self._access[access] = issued + self.expires_in
        self.grants[grant] += 1
        answer: dict[str, Any] = {
            "access_token": access,
            "issued_at": int(issued),
            "token_type": "bearer",
            "expires_in": self.expires_in,
        }
        if refresh is not None:
            answer["refresh_token"] = refresh
        return grant, answer

    # -- API ------------------------------------------------------------------------------------

    def _api(self, request: web.Request) -> dict[str, Any]:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        expiry = self._access.get(token) if scheme.lower() == "bearer" else None
        if expiry is None or self.now() >= expiry:
            raise _error(401, "Unauthorized")
        if request.method != "GET":
            raise _error(405, "method not allowed")
        parts = request.path.strip("/").split("/")
        if parts[:2] == ["v3", "partners"] and len(parts) == 4 and parts[3] == "components":
            return self._partner_components(parts[2], request.query.get("nodeId"))
        if parts[:2] == ["v3", "components"] and len(parts) == 4:
            component = self._component(parts[2])
            if parts[3] == "dataavailable":
                return self._dataavailable(component)
            if parts[3] == "data":
                return self._data(component, dict(request.query))
        raise _error(404, "Not Found")

    def _partner_components(self, partner: str, node_id: str | None) -> dict[str, Any]:
        if partner != str(self.partner_id):
            raise _error(403, "Forbidden")
        found = []
        for component in self.components.values():
            if node_id is not None and not _matches(node_id, component.node_id):
                continue
            found.append(
                {
                    "id": component.id,
                    "siteId": 3393714,
                    "clientId": 419010,
                    "parentId": 3393714,
                    "parentType": "SITE",
                    "nodeId": component.node_id,
                    "name": "PV Meter",
                    "nodeType": "METER",
                    "application": "GENERATION",
                    "generationType": "SOLAR",
                    "oem": "Locus Energy",
                    "model": "LGate 120",
                    "isConceptualNode": False,
                    "exampleNewField": "hello everyone!",
                }
            )
        return {"statusCode": 200, "components": found}

    def _component(self, text: str) -> Component:
        try:
            component = self.components[int(text)]
        except (ValueError, KeyError) as exc:
            raise _error(404, "Not Found") from exc
        return component

    def _dataavailable(self, component: Component) -> dict[str, Any]:
        bases: dict[str, list[str]] = {}
        for short in component.fields:
            bases.setdefault(short.split("_")[0], []).append(short)
        units = {"W": "W", "Wh": "Wh"}
        return {
            "statusCode": 200,
            "baseFields": [
                {
                    "baseField": base,
                    "longName": base,
                    "source": "Measured",
                    "unit": units.get(base, ""),
                    "aggregations": [
                        {"shortName": s, "aggregation": s.split("_")[-1]} for s in shorts
                    ],
                    "granularities": list(component.granularities),
                }
                for base, shorts in bases.items()
            ],
        }

    def _data(self, component: Component, query: dict[str, str]) -> dict[str, Any]:
        for name in ("fields", "tz", "gran"):
            if not query.get(name):
                raise _error(400, f"{name} is required")
        gran = query["gran"]
        if gran not in ALL_GRANS:
            raise _error(400, f"invalid gran {gran!r}")
        fields = query["fields"].split(",")
        for short in fields:
            if short not in component.fields:
                raise _error(400, f"field {short} is not available for component {component.id}")
        if gran not in component.granularities:
            raise _error(400, f"granularity {gran} is not available")
        try:
            zone = ZoneInfo(query["tz"])
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise _error(400, "invalid tz") from exc
        now_ms = int(self.now() * 1000)
        if gran == "latest":
            end = now_ms - now_ms % (5 * MINUTE_MS)
            objects = [
                self._object(component, fields, end - 5 * MINUTE_MS, end, now_ms=now_ms, zone=zone)
            ]
            return {"statusCode": 200, "data": objects}
        start, end = _local(query.get("start"), zone), _local(query.get("end"), zone)
        if end <= start:
            raise _error(400, "end must be after start")
        if gran in SPAN_LIMIT and end - start >= SPAN_LIMIT[gran]:
            raise _error(400, f"the time period is too long for {gran} granularity")
        objects = []
        for begin, finish in _intervals(start, end, gran):
            begin_ms = _epoch_ms(begin)
            if begin_ms >= now_ms:
                break
            objects.append(
                self._object(
                    component, fields, begin_ms, _epoch_ms(finish), now_ms=now_ms, zone=zone
                )
            )
        return {"statusCode": 200, "data": objects}

    def _object(
        self,
        component: Component,
        fields: list[str],
        start_ms: int,
        end_ms: int,
        *,
        now_ms: int,
        zone: ZoneInfo,
    ) -> dict[str, Any]:
        ts = datetime.fromtimestamp(start_ms / 1000, zone).isoformat(timespec="seconds")
        item: dict[str, Any] = {"id": component.id, "ts": ts, "exampleNewField": "ignore me"}
        ranges = component.measured_minutes(start_ms, min(end_ms, now_ms))
        if not ranges:
            return item
        minutes = sum(b - a for a, b in ranges)
        energy = sum(energy_wh(component.scale, a, b) for a, b in ranges)
        if "Wh_sum" in fields:
            item["Wh_sum"] = energy
        if "W_avg" in fields:
            item["W_avg"] = round(energy * 60 / minutes, 3)
        return item


def _matches(pattern: str, node_id: str) -> bool:
    if "%" not in pattern:
        return pattern == node_id
    prefix, _, suffix = pattern.partition("%")
    return node_id.startswith(prefix) and node_id.endswith(suffix.replace("%", ""))


def _local(text: str | None, zone: ZoneInfo) -> datetime:
    if not text:
        raise _error(400, "start and end are required")
    try:
        parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S")
    except ValueError as exc:
        raise _error(400, "timestamps are YYYY-MM-DDThh:mm:ss") from exc
    return parsed.replace(tzinfo=zone)


def _epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _intervals(start: datetime, end: datetime, gran: str) -> list[tuple[datetime, datetime]]:
    """Intervals of `gran` (aligned in the local zone) whose start is in [start, end)."""
    zone = start.tzinfo
    out: list[tuple[datetime, datetime]] = []
    if gran in FIXED_STEP:
        step = FIXED_STEP[gran]
        epoch = datetime(2000, 1, 1, tzinfo=zone)
        offset = (start.replace(tzinfo=None) - epoch.replace(tzinfo=None)) % step
        current = start if not offset else start + (step - offset)
        while current < end:
            out.append((current, current + step))
            current = current + step
        return out
    current = start.replace(day=1, hour=0, minute=0, second=0)
    if gran == "yearly":
        current = current.replace(month=1)
    if current < start:
        current = _next(current, gran)
    while current < end:
        following = _next(current, gran)
        out.append((current, following))
        current = following
    return out


def _next(moment: datetime, gran: str) -> datetime:
    if gran == "yearly":
        return moment.replace(year=moment.year + 1)
    if moment.month == 12:
        return moment.replace(year=moment.year + 1, month=1)
    return moment.replace(month=moment.month + 1)


__all__ = ["Component", "FakeLocus", "Seen", "energy_wh"]
