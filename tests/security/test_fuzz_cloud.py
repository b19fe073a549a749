"""What a broken or hostile cloud endpoint can answer, thrown at every uplink.

A raw TCP server (not aiohttp: it must be able to speak broken HTTP) answers each request from
a script: garbage or endlessly nested JSON, HTML error pages, wrong content types, a 64 MiB
body, an endless chunked body, a 100 KB header line, a status line that is not HTTP, a
connection closed mid-body, and the slow-loris kind (headers or body one byte at a time).

For each of Wattics, EnerKey and PTS, run as the daemon builds them: the uplink keeps running,
the failure is COUNTED in its health (a retry, a parked item or a pause), a big body is read
only up to the uplink's limit (the server sees the client stop reading; Python's traced memory
stays small), and a slow answer ends at the uplink's timeout. A hypothesis test then throws
random status, content type, headers and body at the PTS client: a result or PtsCallError,
nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from core.health import Health, UplinkHealth
from core.sample import Sample
from gateway.config.schema import Config
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from gateway.timefmt import HOUR_MS, floor_hour_ms
from gateway.uplinks.pts.client import PtsCallError, PtsClient
from gateway.uplinks.registry import UplinkContext, build_uplinks
from tests.helpers.eventually import eventually

TIMEOUT_S = 0.2
HUGE = 64 * 1024 * 1024
#: What an uplink may hold of one answer (the PTS client's limit, the largest of them).
READ_LIMIT = 1 << 20

Writer = Callable[[bytes], Awaitable[None]]
#: (the request's head, how to write) -> plays one answer
Script = Callable[[bytes, Writer], Awaitable[None]]


def _head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def answer(status: str, content_type: str, body: bytes, **headers: str) -> Script:
    async def play(head: bytes, write: Writer) -> None:
        fields = {"Content-Type": content_type, "Content-Length": str(len(body)), **headers}
        await write(_head(status, fields) + body)

    return play


async def _huge_body(head: bytes, write: Writer) -> None:
    await write(_head("500 Internal Server Error", {"Content-Length": str(HUGE)}))
    chunk = b"x" * 65536
    for _ in range(HUGE // len(chunk)):
        await write(chunk)


async def _endless_chunked(head: bytes, write: Writer) -> None:
    await write(
        _head("200 OK", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    )
    chunk = b"[" * 65536
    for _ in range(HUGE // len(chunk)):
        await write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")


async def _slow_headers(head: bytes, write: Writer) -> None:
    await write(b"HTTP/1.1 200 OK\r\n")
    while True:  # slow-loris: one header byte at a time, never the end of the headers
        await write(b"X")
        await asyncio.sleep(0.02)


async def _slow_body(head: bytes, write: Writer) -> None:
    await write(_head("200 OK", {"Content-Type": "application/json", "Content-Length": "100000"}))
    while True:
        await write(b" ")
        await asyncio.sleep(0.02)


async def _close_mid_body(head: bytes, write: Writer) -> None:
    await write(_head("200 OK", {"Content-Type": "application/json", "Content-Length": "1000"}))
    await write(b'{"systems": [')
    raise ConnectionResetError  # the server goes away


async def _not_http(head: bytes, write: Writer) -> None:
    await write(b"\x00\xff\xfeSSH-2.0-OpenSSH\r\n\r\ngarbage")


async def _huge_header(head: bytes, write: Writer) -> None:
    await write(_head("200 OK", {"X-Junk": "j" * 100_000, "Content-Length": "0"}))


CASES: dict[str, Script] = {
    "garbage-json": answer("200 OK", "application/json", b'{"systems": [1, 2,, oops'),
    "deep-json": answer("200 OK", "application/json", b"[" * 200_000),
    "html-error-page": answer("503 Service Unavailable", "text/html", b"<html><h1>503</h1></html>"),
    "wrong-content-type": answer("400 Bad Request", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(64)),
    "retry-after-garbage": answer(
        "429 Too Many", "text/plain", b"slow down", **{"Retry-After": "soon!"}
    ),
    "unknown-status": answer("799 Whatever", "application/json", b"{}"),
    "huge-body": _huge_body,
    "endless-chunked": _endless_chunked,
    "slow-loris-headers": _slow_headers,
    "slow-loris-body": _slow_body,
    "close-mid-body": _close_mid_body,
    "not-http": _not_http,
    "huge-header": _huge_header,
}


#: Cases whose status line says 200: Wattics and EnerKey rightly take that as delivered.
ANSWERED_200 = frozenset(
    {"garbage-json", "deep-json", "endless-chunked", "slow-loris-body", "close-mid-body"}
    | {"huge-header"}
)


@dataclass
class ScriptedServer:
    """Answers every HTTP request it reads with `script`; counts what it managed to send."""

    script: Script
    requests: int = 0
    sent: int = 0
    port: int = 0
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)

        async def write(data: bytes) -> None:
            writer.write(data)
            await writer.drain()
            self.sent += len(data)

        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.requests += 1
                await self.script(head, write)
        writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ScriptedServer]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(server.sockets[0].getsockname()[1])
        try:
            yield self
        finally:
            server.close()
            for writer in self._writers:
                writer.close()
            await server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _config(tmp_path: Path, uplink: str, url: str, **overrides: object) -> Config:
    common = {"timeout_secs": TIMEOUT_S, "retry_initial_secs": 0.01, "retry_max_secs": 0.05}
    sections = {
        "wattics": {
            "url": f"{url}/measurements/v2/unifiedjson/",
            "username": "fuzz",
            "password": "fuzz-password",
            "max_attempts_rejected": 1,
            "resync_on_start": False,
            "meters": {"m1": {"id": "s1"}},
        },
        "enerkey": {
            "base_url": url,
            "api_keys": ["fuzz-key-a", "fuzz-key-b"],
            "max_attempts_rejected": 1,
            "meters": {"m1": {"meter_id": 4711, "unit": "kWh"}},
        },
        "pts": {
            "subscription_key": "fuzz-pts-key",
            "base_url": url,
            "path_prefix": "/ptsstaging",
            "systems": {"m1": {"fk_system": 1000}},
        },
    }
    return Config.model_validate(
        {
            "gateway": {"id": "fuzz", "data_dir": str(tmp_path)},
            "buses": {"plant": {"type": "modbus-tcp", "host": "127.0.0.1"}},
            "meters": [{"id": "m1", "bus": "plant", "model": "sdm630"}],
            "uplinks": {uplink: sections[uplink] | common | overrides},
        }
    )


def _counted(health: UplinkHealth) -> bool:
    # What the test asserts, not `last_error` alone: an uplink sets last_error first and
    # counts the answer (retries, parked) after an await or two.
    return bool(health.retries or health.parked or health.paused_reason or health.delivered)


async def _exercise(tmp_path: Path, uplink: str, server: ScriptedServer) -> UplinkHealth:
    """Run the uplink on a store holding something to send until its first answer counted."""
    hour = floor_hour_ms(int(time.time() * 1000)) - 2 * HOUR_MS
    with Store(tmp_path / "gateway.sqlite3") as store:
        store.append(
            [
                Sample("m1", ts, {"energy_active_import": 1000.0 + i, "power_active": 5.0})
                for i, ts in enumerate((hour - 60_000, hour + 60_000, hour + HOUR_MS + 60_000))
            ]
        )
    astore = AsyncStore(Store(tmp_path / "gateway.sqlite3"))
    health = Health()
    try:
        config = _config(tmp_path, uplink, server.url)
        (built,) = build_uplinks(UplinkContext(config, astore, health))
        task = asyncio.get_running_loop().create_task(built.run(), name=f"fuzz-{uplink}")
        try:
            state = health.uplink(uplink)

            def counted() -> bool:
                if _counted(state):
                    return True
                assert not task.done(), f"{uplink} stopped: {task.exception()!r}"
                return False

            await eventually(counted, timeout=10, what=f"{uplink} to count the answer")
            assert not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await astore.aclose()
    return health.uplink(uplink)


@pytest.mark.parametrize("uplink", ["wattics", "enerkey", "pts"])
@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_hostile_answer_is_a_counted_error_and_the_uplink_runs_on(
    tmp_path: Path, uplink: str, case: str
) -> None:
    server = ScriptedServer(CASES[case])
    big = case in ("huge-body", "endless-chunked")
    if big:
        tracemalloc.start()
    started = time.monotonic()
    try:
        async with server.running():
            state = await _exercise(tmp_path, uplink, server)
        if big:
            _, peak = tracemalloc.get_traced_memory()
    finally:
        if big:
            tracemalloc.stop()
    assert server.requests >= 1
    if case not in ANSWERED_200:  # a 2xx status line is the acknowledgement, whatever follows
        assert state.delivered == 0, state
    assert state.retries or state.parked or state.paused_reason or state.delivered, state
    if big:
        # The client stopped reading near its limit: it neither took 64 MiB nor held it.
        assert server.sent < HUGE / 4, server.sent
        assert peak < 16 * READ_LIMIT, f"{peak / 1e6:.1f} MB traced"
    if case.startswith("slow-loris"):
        assert time.monotonic() - started < 10 * TIMEOUT_S + 2  # ended by the timeout
    for text in (state.last_error or "", state.paused_reason or ""):
        assert len(text) < 2000  # what reaches logs and MQTT is bounded too


# -- random answers at the PTS client -----------------------------------------------------------

STATUS_LINES = st.one_of(
    st.integers(100, 599).map(lambda n: f"{n} X"),
    st.sampled_from(["200 OK", "204 No Content", "301 Moved", "401 Unauthorized", "500 Oops"]),
)
CONTENT_TYPES = st.sampled_from(
    ["application/json", "text/html", "text/plain; charset=utf-16", "application/xml", "", "x/y"]
)
BODIES = st.one_of(
    st.binary(max_size=2000),
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
        max_leaves=20,
    ).map(lambda value: repr(value).replace("'", '"').encode()),
    st.sampled_from([b'{"systems": [{"fk_system": "1000", "capacity": "NaN"}]}', b"[" * 5000]),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STATUS_LINES, CONTENT_TYPES, BODIES, st.text(max_size=30))
def test_any_answer_to_the_pts_client_is_a_result_or_a_pts_call_error(
    status: str, content_type: str, body: bytes, retry_after: str
) -> None:
    header_safe = retry_after.encode("latin-1", "ignore").decode("latin-1").replace("\r", "")
    header_safe = header_safe.replace("\n", "")
    script = answer(status, content_type, body, **{"Retry-After": header_safe})

    async def call() -> None:
        server = ScriptedServer(script)
        async with server.running():
            client = PtsClient(
                f"{server.url}/ptsstaging", SecretStr("fuzz-key"), timeout_secs=TIMEOUT_S
            )
            try:
                systems = await client.get_systems([1000])
            except PtsCallError as exc:
                assert exc.kind in ("retry", "auth", "rejected")
                assert "fuzz-key" not in str(exc)
            else:
                assert set(systems) <= {1000}
            finally:
                await client.aclose()

    asyncio.run(call())


async def test_a_resync_answer_nested_beyond_the_parser_does_not_stop_wattics(
    tmp_path: Path,
) -> None:
    """Wattics' GET (its last processed packet) answers JSON nested 200 000 deep: the stream
    must fall back to sending (at-least-once), not restart forever on a RecursionError."""
    deep = answer("200 OK", "application/json", b"[" * 200_000)
    ok = answer("200 OK", "text/plain", b"OK")

    async def play(head: bytes, write: Writer) -> None:
        await (deep if head.startswith(b"GET ") else ok)(head, write)

    server = ScriptedServer(play)
    async with server.running():
        hour = floor_hour_ms(int(time.time() * 1000))
        with Store(tmp_path / "gateway.sqlite3") as store:
            store.append([Sample("m1", hour + i, {"power_active_l1": 1.0}) for i in range(3)])
        astore = AsyncStore(Store(tmp_path / "gateway.sqlite3"))
        health = Health()
        config = _config(tmp_path, "wattics", server.url, resync_on_start=True)
        (built,) = build_uplinks(UplinkContext(config, astore, health))
        task = asyncio.get_running_loop().create_task(built.run(), name="fuzz-resync")
        try:
            await eventually(lambda: health.uplink("wattics").delivered >= 3, timeout=2)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await astore.aclose()
