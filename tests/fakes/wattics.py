"""A strict local stand-in for the Wattics push API (tests and `meter-gateway demo`).

Strict means: whatever the real service would refuse, this refuses too. Rules, from
/work/shared/specs/wattics-data-push-api.txt and NOTES.md:
- Only `/measurements/v2/unifiedjson/` (trailing slash required; anything else 404), POST to
  push, GET `?stream=<id>` for the last processed packet; other methods 405.
- HTTP basic auth on every request, else 401 (with WWW-Authenticate).
- POST: Content-Type application/json (else 415); the body is UTF-8, ONE line (any CR or LF:
  400), one JSON object (a list: 400; duplicate keys, NaN, Infinity: 400) with a string `id`
  and `tsISO8601` matching exactly `YYYY-MM-DDThh:mm:ss.sss±hh:mm` (else 400), and EITHER
  electricity fields (only the 21 names the spec lists) OR one `value`; unknown keys, mixed
  formats, nulls, non-numbers or a packet with no measurement at all: 400.
- `id` not among `streams` (when streams were registered): 404. With `streams=None` any id
  is accepted (the demo registers none). `register(id, kind, interval_s)` registers a
  datapoint as the platform's admin would: a packet of the other kind (electricity fields
  to a value datapoint or the reverse) is refused 400; with an interval, packets whose
  local wall-clock time is off the interval grid are counted in `off_grid` (the real
  service shows nothing for them) and missing boundaries between accepted packets in
  `holes(id)` (the platform assumes a data hole).
- UTC route `/measurements/v2/unifiedjson_utc/`: same rules, but the timestamp must be UTC
  (offset +00:00): the server converts it to site time itself.
- A packet whose instant is not later than the last accepted one of its stream is answered
  200 but DISCARDED (the real service silently drops packets not sent chronologically).
  Instants are compared, not wall-clock text: in the repeated autumn hour the offset differs.
- "Non-secure requests are automatically rejected": a plain-http request whose Host names
  anything but a loopback address is answered 403 (this fake then plays a remote host reached
  without TLS: the gateway refuses such a URL in config already, core.config_base). Loopback
  http is how tests reach the fake, as the gateway's config allows.
- With `site_tz`, a packet on the local-time route whose offset is not the site's offset at
  that instant is counted in `wrong_offset` (the real service would show it at the wrong
  time); `routes` counts accepted packets per route path.
- A success answer is `200 OK` (text); the real body is not documented.
- GET answers the last accepted packet of the stream as sent (the real shape is UNKNOWN;
  clients must parse defensively), 404 when the stream has none, 400 without `stream=`.

Failure injection happens before any check (as a load balancer would): fail_next, fail_for,
slow, drop_connections; lose_answers processes a packet and then drops the connection (the
window where the service has a packet the client never heard about); reject_credentials /
accept_credentials switch the auth check; reject_matching refuses chosen valid packets
(e.g. to exercise the dead-letter path).
Importable without pytest.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import math
import re
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from tests.fakes.loopback import LoopbackServer, is_loopback_host

PATH = "/measurements/v2/unifiedjson/"
UTC_PATH = "/measurements/v2/unifiedjson_utc/"


@dataclass(frozen=True)
class Datapoint:
    """A datapoint as registered on the platform."""

    kind: str = "electricity"  # or "value"
    interval_s: int | None = None


#: The electricity parameters the API document lists, written out here on purpose (not imported
#: from the uplink) so that a mistake in the uplink cannot hide in the fake.
ELECTRICITY_KEYS = frozenset(
    {
        "aP_1", "aP_2", "aP_3",
        "rP_1", "rP_2", "rP_3",
        "apP_1", "apP_2", "apP_3",
        "v_1", "v_2", "v_3",
        "c_1", "c_2", "c_3",
        "pC_1", "pC_2", "pC_3",
        "v_12", "v_13", "v_23",
    }
)  # fmt: skip

_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}", re.ASCII)

Packet = dict[str, Any]


class _Invalid(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Rejection:
    status: int
    reason: str
    body: bytes


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> Packet:
    result: Packet = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _instant_ms(stamp: str) -> int:
    return round(datetime.fromisoformat(stamp).timestamp() * 1000)


def _wall_clock_s(stamp: str) -> float:
    """Seconds since local midnight as the timestamp's text says (its own offset)."""
    when = datetime.fromisoformat(stamp)
    return when.hour * 3600 + when.minute * 60 + when.second + when.microsecond / 1e6


def validate_packet(body: bytes) -> tuple[Packet, int]:
    """The packet and its instant (epoch ms), or _Invalid(status, reason)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Invalid(400, "body is not UTF-8") from exc
    if "\n" in text or "\r" in text:
        raise _Invalid(400, "packet must be sent in one line, no line breaks")
    try:
        packet = json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_duplicates)
    except ValueError as exc:
        raise _Invalid(400, f"invalid JSON: {exc}") from exc
    if not isinstance(packet, dict):
        raise _Invalid(400, "packet must be one JSON object")
    stream = packet.get("id")
    if not isinstance(stream, str) or not stream:
        raise _Invalid(400, "id must be a non-empty string")
    stamp = packet.get("tsISO8601")
    if not isinstance(stamp, str) or not _TS.fullmatch(stamp):
        raise _Invalid(400, "tsISO8601 must look like 2016-02-10T21:45:31.070+11:00")
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError as exc:
        raise _Invalid(400, f"tsISO8601 is not a valid time: {exc}") from exc
    offset = when.utcoffset()
    if offset is None or abs(offset.total_seconds()) > 14 * 3600:
        raise _Invalid(400, "tsISO8601 offset out of range")
    measures = {k: v for k, v in packet.items() if k not in ("id", "tsISO8601")}
    if not measures:
        raise _Invalid(400, "packet carries no measurement")
    if "value" in measures:
        if len(measures) != 1:
            raise _Invalid(400, "a value packet carries only id, tsISO8601 and value")
    else:
        unknown = sorted(set(measures) - ELECTRICITY_KEYS)
        if unknown:
            raise _Invalid(400, f"unknown parameter(s): {', '.join(unknown)}")
    for key, value in measures.items():
        if not _is_number(value):
            raise _Invalid(400, f"{key} must be a number, got {json.dumps(value)}")
    return packet, round(when.timestamp() * 1000)


class FakeWattics(LoopbackServer):
    """Strict fake Wattics on loopback; `async with` starts and stops it (safe to exit twice)."""

    def __init__(
        self,
        username: str = "user",
        password: str = "secret",
        streams: set[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        site_tz: str | None = None,
    ) -> None:
        self.host = host
        self.site_tz = None if site_tz is None else ZoneInfo(site_tz)
        #: Accepted packets per route path.
        self.routes: Counter[str] = Counter()
        #: Local-route packets whose offset is not the site's (only with `site_tz`).
        self.wrong_offset: Counter[str] = Counter()
        self.port = port
        self.ssl_context = ssl_context
        self.streams = set(streams) if streams is not None else None
        self._credentials: tuple[str, str] | None = (username, password)
        #: Accepted packets per stream, in arrival order.
        self.accepted: dict[str, list[Packet]] = {}
        #: Packets answered 200 but dropped because they were not later than the last one.
        self.discarded: dict[str, list[Packet]] = {}
        self.rejected: list[Rejection] = []
        self.requests = 0
        self.statuses: Counter[int] = Counter()
        self.dropped = 0
        #: (time.monotonic(), method, status) of every answered request; status 0 = dropped.
        self.history: list[tuple[float, str, int]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._last_ms: dict[str, int] = {}
        self._fail_next: list[tuple[int, float | str | None, bytes | None, str | None]] = []
        self._fail_until = 0.0
        self._fail_for_status = 503
        self._fail_for_retry_after: float | None = None
        self._delay = 0.0
        self._delay_after = False
        self._drop = 0
        self._lose = 0
        self.lost_answers = 0
        self.datapoints: dict[str, Datapoint] = {}
        #: Accepted packets off their datapoint's registered interval grid, per stream.
        self.off_grid: Counter[str] = Counter()
        self._rejecters: list[tuple[Callable[[Packet], bool], int, str]] = []
        self._forbidden: set[str] = set()
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def stop(self) -> None:
        self._wake.set()  # answer slowed requests now rather than at the shutdown timeout
        await super().stop()

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}{PATH}"

    # -- failure injection ----------------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        status: int = 503,
        *,
        retry_after: float | str | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> None:
        """Answer the next `n` requests with `status` (and Retry-After, and any raw `body`
        of `content_type`: e.g. a captive portal's HTML page with 200)."""
        self._fail_next.extend([(status, retry_after, body, content_type)] * n)

    def fail_for(
        self, seconds: float, status: int = 503, *, retry_after: float | None = None
    ) -> None:
        """Answer every request with `status` for the next `seconds`."""
        self._fail_until = time.monotonic() + seconds
        self._fail_for_status = status
        self._fail_for_retry_after = retry_after

    def slow(self, seconds: float, *, after_processing: bool = False) -> None:
        """Delay every answer by `seconds`; 0 stops, and answers the waiting ones now.

        after_processing: take the packet first, then hold the answer (a client that dies
        meanwhile never learns that its packet arrived)."""
        self._delay = seconds
        self._delay_after = after_processing
        if not seconds:
            self._wake.set()
            self._wake = asyncio.Event()

    def drop_connections(self, n: int) -> None:
        """Close the socket of the next `n` requests without answering."""
        self._drop += n

    def lose_answers(self, n: int) -> None:
        """Process the next `n` pushes, then close the socket instead of answering."""
        self._lose += n

    def register(
        self, stream: str, kind: str = "electricity", interval_s: int | None = None
    ) -> None:
        """Register a datapoint: its packet kind and transmission interval."""
        if kind not in ("electricity", "value"):
            raise ValueError(kind)
        self.datapoints[stream] = Datapoint(kind, interval_s)
        if self.streams is not None:
            self.streams.add(stream)

    def holes(self, stream: str) -> int:
        """Registered-interval boundaries between the first and last accepted packet of
        `stream` that received no packet."""
        interval = self.datapoints[stream].interval_s
        if interval is None:
            raise ValueError(f"{stream} has no registered interval")
        instants = [_instant_ms(p["tsISO8601"]) for p in self.accepted.get(stream, [])]
        step = interval * 1000
        return sum(max(0, (b - a) // step - 1) for a, b in itertools.pairwise(instants))

    def reject_credentials(self) -> None:
        """Answer 401 to everything until accept_credentials() sets new ones."""
        self._credentials = None

    def accept_credentials(self, username: str, password: str) -> None:
        self._credentials = (username, password)

    def forbid(self, stream: str) -> None:
        """Answer 403 ("not allowed to the user who owns the token") to pushes to `stream`."""
        self._forbidden.add(stream)

    def allow(self, stream: str) -> None:
        self._forbidden.discard(stream)

    def reject_matching(
        self, predicate: Callable[[Packet], bool], status: int = 400, reason: str = "rejected"
    ) -> None:
        """Refuse otherwise valid packets for which `predicate` holds (every time)."""
        self._rejecters.append((predicate, status, reason))

    # -- observation ----------------------------------------------------------------------------

    def delivered(self, stream: str) -> list[Packet]:
        return list(self.accepted.get(stream, []))

    def total_accepted(self) -> int:
        return sum(len(packets) for packets in self.accepted.values())

    def all_discarded(self) -> list[Packet]:
        return [packet for packets in self.discarded.values() for packet in packets]

    async def wait_accepted(self, total: int, timeout: float = 5.0) -> None:
        """Wait until `total` packets were accepted in all (TimeoutError otherwise)."""
        async with asyncio.timeout(timeout):
            while self.total_accepted() < total:
                event = self._changed
                await event.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- HTTP -----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.read()
            if self._delay and not self._delay_after:
                await self._held()
            if self._drop:
                self._drop -= 1
                self.dropped += 1
                self.history.append((time.monotonic(), request.method, 0))
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=500)  # never reaches the client: the socket is gone
            response = self._injected() or self._answer(request, body)
            if self._delay and self._delay_after:
                self._notify()
                await self._held()
            if self._lose and request.method == "POST" and response.status == 200:
                self._lose -= 1
                self.lost_answers += 1
                self.history.append((time.monotonic(), request.method, 0))
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=500)  # the packet counts; the answer is lost
            self.statuses[response.status] += 1
            self.history.append((time.monotonic(), request.method, response.status))
            self._notify()
            return response
        finally:
            self.in_flight -= 1

    async def _held(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._delay):
                await self._wake.wait()

    def _injected(self) -> web.Response | None:
        body: bytes | None = None
        content_type: str | None = None
        retry_after: float | str | None
        if self._fail_next:
            status, retry_after, body, content_type = self._fail_next.pop(0)
        elif time.monotonic() < self._fail_until:
            status, retry_after = self._fail_for_status, self._fail_for_retry_after
        else:
            return None
        headers = {}
        if retry_after is not None:
            value = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
            headers["Retry-After"] = value
        if body is not None:
            return web.Response(
                status=status, body=body, headers=headers, content_type=content_type
            )
        return web.json_response({"error": f"injected {status}"}, status=status, headers=headers)

    def _answer(self, request: web.Request, body: bytes) -> web.Response:
        try:
            if not request.secure and not is_loopback_host(request.host):
                raise _Invalid(403, "Non-secure requests are automatically rejected")
            if request.path not in (PATH, UTC_PATH):
                raise _Invalid(404, "not found")
            if request.method not in ("POST", "GET"):
                raise _Invalid(405, "method not allowed")
            self._check_auth(request.headers.get("Authorization"))
            if request.method == "GET":
                return self._last_packet(request)
            return self._push(request, body)
        except _Invalid as exc:
            self.rejected.append(Rejection(exc.status, exc.reason, body))
            headers = {"WWW-Authenticate": 'Basic realm="wattics"'} if exc.status == 401 else {}
            return web.json_response({"error": exc.reason}, status=exc.status, headers=headers)

    def _check_auth(self, header: str | None) -> None:
        if self._credentials is None or header is None:
            raise _Invalid(401, "unauthorized")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise _Invalid(401, "unauthorized")
        try:
            raw = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Invalid(401, "unauthorized") from exc
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Invalid(401, "unauthorized") from exc
        username, sep, password = decoded.partition(":")
        if not sep or (username, password) != self._credentials:
            raise _Invalid(401, "unauthorized")

    def _push(self, request: web.Request, body: bytes) -> web.Response:
        if request.content_type != "application/json":
            raise _Invalid(415, "Content-Type must be application/json")
        packet, when_ms = validate_packet(body)
        if request.path == UTC_PATH and not packet["tsISO8601"].endswith("+00:00"):
            raise _Invalid(400, "the UTC route takes UTC timestamps (+00:00)")
        for predicate, status, reason in self._rejecters:
            if predicate(packet):
                raise _Invalid(status, reason)
        stream = packet["id"]
        if stream in self._forbidden:
            raise _Invalid(403, f"data stream {stream!r} is not allowed to this user")
        if self.streams is not None and stream not in self.streams:
            raise _Invalid(404, f"unknown data stream {stream!r}")
        registered = self.datapoints.get(stream)
        if registered is not None:
            kind = "value" if "value" in packet else "electricity"
            if kind != registered.kind:
                raise _Invalid(400, f"datapoint {stream!r} takes {registered.kind} packets")
        last = self._last_ms.get(stream)
        if last is not None and when_ms <= last:
            self.discarded.setdefault(stream, []).append(packet)
        else:
            self._last_ms[stream] = when_ms
            self.accepted.setdefault(stream, []).append(packet)
            self.routes[request.path] += 1
            if request.path == PATH and self.site_tz is not None:
                stamp = datetime.fromisoformat(packet["tsISO8601"])
                if stamp.utcoffset() != stamp.astimezone(self.site_tz).utcoffset():
                    self.wrong_offset[stream] += 1
            interval = registered.interval_s if registered is not None else None
            if interval is not None and _wall_clock_s(packet["tsISO8601"]) % interval:
                self.off_grid[stream] += 1
        return web.Response(status=200, text="OK")

    def _last_packet(self, request: web.Request) -> web.Response:
        stream = request.query.get("stream")
        if not stream:
            raise _Invalid(400, "stream parameter required")
        packets = self.accepted.get(stream)
        if not packets:
            # A question with a "no" answer, not a refused packet: not recorded as rejected.
            return web.json_response({"error": f"no packet processed for {stream!r}"}, status=404)
        return web.json_response(packets[-1])


async def _serve(host: str, port: int, username: str, password: str, delay: float) -> None:
    """Run until SIGINT/SIGTERM; print the URL once listening (for scripts and benchmarks)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FakeWattics(username, password, host=host, port=port) as fake:
        fake.slow(delay)
        print(f"READY {fake.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """`python -m tests.fakes.wattics [--host H] [--port P] [--username U] [--password P]
    [--delay S]`: prints `READY <url>` once listening, runs until SIGINT/SIGTERM."""
    import argparse

    parser = argparse.ArgumentParser(description="strict fake Wattics push API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--username", default="user")
    parser.add_argument("--password", default="secret")
    parser.add_argument("--delay", type=float, default=0.0, help="answer every request late (s)")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, args.username, args.password, args.delay))


if __name__ == "__main__":
    main()
