"""Wattics uplink: one JSON packet per sample, each stream in time order, over one HTTP session.

Invariants (every change must keep them):
1. Per stream, packets leave in store order, which per meter is time order: packet n+1 is not
   sent before packet n was answered 200 or parked. Streams run concurrently (at most
   max_concurrency requests in flight) over ONE kept-alive aiohttp session.
2. A cursor never passes a packet that was neither answered 200 nor parked. Acknowledged
   packets are committed in groups (commit_every_packets / commit_every_secs, and at once when
   the stream is caught up, is about to wait, or stops), so catch-up needs no fsync per packet
   and a crash re-sends at most one group. With resync_on_start the stream first asks Wattics
   for its last processed packet and skips what it already has (Wattics discards any packet
   not later than that one, so skipping loses nothing).
3. Nothing is dropped for a transient failure or refused credentials: RETRY re-sends the SAME
   packet after a jittered backoff; AUTH pauses every stream, alerts once and probes every
   auth_probe_secs. Only a packet rejected (other 4xx) max_attempts_rejected times is parked
   in the dead-letter table, with status and body, and the stream moves on.
4. On cancellation, waiting streams stop at once; a request in flight may finish within
   shutdown_grace_secs (then it is abandoned, never acknowledged); the acknowledged prefix is
   committed and the session closed.
5. The password and the Authorization header are never logged or put into health.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from functools import lru_cache
from typing import Final

import aiohttp
import yarl

from gateway import config as cfg
from gateway.async_store import AsyncStore
from gateway.clock import Clock, SystemClock
from gateway.health import Health
from gateway.sample import Sample, StoredSample
from gateway.timefmt import local_iso8601_ms, parse_iso8601_ms, zone
from gateway.uplinks.common import AuthGate, read_limited, run_streams_until_cancelled
from gateway.uplinks.policy import (
    TRANSPORT_ERRORS,
    Backoff,
    Outcome,
    Verdict,
    classify_exception,
    classify_response,
    classify_status,
)

log = logging.getLogger(__name__)

# -- packets ------------------------------------------------------------------------------------

#: Wattics electricity key -> canonical channel (gateway.channels); units already match.
ELECTRICITY_FIELDS: Final[Mapping[str, str]] = {
    **{f"v_{n}": f"voltage_l{n}" for n in (1, 2, 3)},
    **{f"c_{n}": f"current_l{n}" for n in (1, 2, 3)},
    **{f"aP_{n}": f"power_active_l{n}" for n in (1, 2, 3)},
    **{f"rP_{n}": f"power_reactive_l{n}" for n in (1, 2, 3)},
    **{f"apP_{n}": f"power_apparent_l{n}" for n in (1, 2, 3)},
    "pC_1": "energy_active_import",
    "v_12": "voltage_l1_l2",
    "v_23": "voltage_l2_l3",
    "v_13": "voltage_l3_l1",
}

#: With energy_per_phase: pC_n carries each phase's import register instead of the total.
PER_PHASE_ENERGY: Final[Mapping[str, str]] = {
    f"pC_{n}": f"energy_active_import_l{n}" for n in (1, 2, 3)
}


def _fields(energy_per_phase: bool) -> tuple[tuple[str, str], ...]:
    """(Wattics key, channel) pairs in packet order."""
    fields = dict(ELECTRICITY_FIELDS)
    if energy_per_phase:
        del fields["pC_1"]
        fields.update(PER_PHASE_ENERGY)
    return tuple(fields.items())


_TOTAL_FIELDS: Final = _fields(False)
_PHASE_FIELDS: Final = _fields(True)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def build_packet(
    sample: Sample, stream_id: str, tz: str | tzinfo, *, energy_per_phase: bool = False
) -> dict[str, object] | None:
    """The electricity packet for one sample, or None when it holds nothing Wattics takes.

    Missing, null and non-finite values are left out (the API accepts a subset). Energy is
    Wh as stored: by default the total import goes to pC_1, the API's rule for a single total.
    """
    values: dict[str, object] = {}
    for key, channel in _PHASE_FIELDS if energy_per_phase else _TOTAL_FIELDS:
        value = sample.values.get(channel)
        if _number(value):
            values[key] = value
    if not values:
        return None
    return {"id": stream_id, "tsISO8601": local_iso8601_ms(sample.ts_ms, tz), **values}


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def encode_packet(packet: Mapping[str, object]) -> bytes:
    """Compact JSON on one line (the API refuses line breaks); ASCII-only, no NaN."""
    return _ENCODER.encode(packet).encode()


@lru_cache(maxsize=1024)
def _head(stream_id: str) -> str:
    return '{"id":' + _ENCODER.encode(stream_id) + ',"tsISO8601":"'


def encode_sample(
    sample: Sample, stream_id: str, tz: str | tzinfo, *, energy_per_phase: bool = False
) -> bytes | None:
    """Exactly `encode_packet(build_packet(...))` (a property test holds them equal), built
    without the intermediate dict: the uplink's hot path during catch-up.
    """
    values = sample.values
    parts: list[str] = []
    for key, channel in _PHASE_FIELDS if energy_per_phase else _TOTAL_FIELDS:
        value = values.get(channel)
        if value.__class__ is float:
            if value - value == 0.0:  # finite (NaN and infinities give NaN)
                parts.append(f'"{key}":{float.__repr__(value)}')
        elif _number(value):
            parts.append(f'"{key}":{_ENCODER.encode(value)}')
    if not parts:
        return None
    text = f'{_head(stream_id)}{local_iso8601_ms(sample.ts_ms, tz)}",{",".join(parts)}}}'
    return text.encode()


def basic_auth(username: str, password: str) -> str:
    """The Authorization header value for HTTP basic auth (RFC 7617, UTF-8)."""
    if ":" in username:
        raise ValueError("a basic-auth username cannot contain ':'")
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def last_timestamp_ms(body: object, *, depth: int = 4) -> int | None:
    """Latest `tsISO8601` found anywhere in a JSON answer to GET ?stream= (shape UNKNOWN)."""
    found: list[int] = []

    def walk(node: object, level: int) -> None:
        if level > depth:
            return
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and key.lower() == "tsiso8601" and isinstance(value, str):
                    with contextlib.suppress(ValueError):
                        found.append(parse_iso8601_ms(value))
                else:
                    walk(value, level + 1)
        elif isinstance(node, list):
            for item in node[:1000]:
                walk(item, level + 1)

    walk(body, 0)
    return max(found) if found else None


# -- time and the session, injectable for tests -------------------------------------------------


SessionFactory = Callable[[], aiohttp.ClientSession]

#: Samples read from the store per query.
READ_BATCH: Final = 500
#: A caught-up stream re-reads the store at least this often even without an append signal.
IDLE_RECHECK_SECS: Final = 30.0


@dataclass
class _Stream:
    stream: str
    meter: str
    acked: int = 0
    committed: int = 0
    uncommitted: int = 0
    committed_at: float = 0.0
    failing_since: str | None = None
    failures: int = 0
    in_request: bool = False


# -- the uplink ---------------------------------------------------------------------------------


class WatticsUplink:
    """Delivers configured meters' samples to Wattics; see the module invariants."""

    def __init__(
        self,
        config: cfg.WatticsUplink,
        *,
        store: AsyncStore,
        health: Health,
        timezone: str,
        name: str = "wattics",
        session_factory: SessionFactory | None = None,
        clock: Clock | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.config = config
        self._astore = store
        self._health = health
        self._tz = zone(timezone)
        self._session_factory = session_factory
        self._clock: Clock = clock or SystemClock()
        self._rng = rng
        self._session: aiohttp.ClientSession | None = None
        self._semaphore = asyncio.Semaphore(config.max_concurrency)
        self._gate = AuthGate()
        # Secret: only ever sent as a header; never logged, never put into health or alerts.
        self._headers = {
            "Content-Type": "application/json",
            "Authorization": basic_auth(
                config.username.get_secret_value(), config.password.get_secret_value()
            ),
        }
        self._url = yarl.URL(config.url)
        self._streams: dict[str, str] = {}
        for meter, target in config.meters.items():
            if target.id in self._streams:
                raise ValueError(
                    f"Wattics stream {target.id!r} is configured for two meters "
                    f"({self._streams[target.id]!r} and {meter!r})"
                )
            self._streams[target.id] = meter
        self._uplink_health = health.uplink(name)
        self.skipped = 0  # samples with no channel Wattics takes
        self._stopping = False

    def streams(self) -> dict[str, str]:
        return dict(self._streams)

    @property
    def paused(self) -> bool:
        return self._gate.paused

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> WatticsUplink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session; safe to call twice."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self._session_factory is not None:
                self._session = self._session_factory()
            else:
                self._session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.config.timeout_secs),
                    connector=aiohttp.TCPConnector(limit=self.config.max_concurrency),
                )
        return self._session

    async def run(self) -> None:
        """Deliver every stream until cancelled; closes the session on the way out."""
        self._open_session()
        log.info(
            "%s: delivering %d stream(s) to %s",
            self.name,
            len(self._streams),
            self._url.with_user(None).with_query(None),
        )
        self._stopping = False
        streams = {stream: _Stream(stream, meter) for stream, meter in self._streams.items()}

        def stop() -> None:
            self._stopping = True

        try:
            # Shutdown: waiting streams stop now; one with a request in flight may finish it
            # for up to shutdown_grace_secs, so a packet Wattics took is not sent again.
            await run_streams_until_cancelled(
                self.name,
                {stream: functools.partial(self._supervise, st) for stream, st in streams.items()},
                busy=lambda stream: streams[stream].in_request,
                grace_secs=self.config.shutdown_grace_secs,
                on_stop=stop,
            )
        finally:
            await self.aclose()

    async def _supervise(self, st: _Stream) -> None:
        """Run one stream; a bug or store error restarts it from its cursor, not the daemon."""
        backoff = self._backoff()
        while not self._stopping:
            try:
                await self._run_stream(st)
            except Exception as exc:
                log.exception("%s/%s: stream stopped by an error; restarting", self.name, st.stream)
                self._uplink_health.last_error = f"internal: {type(exc).__name__}"
                await self._clock.sleep(backoff.next_delay())

    async def _run_stream(self, st: _Stream) -> None:
        position = await self._astore.call(
            self._astore.store.register_stream, self.name, st.stream, st.meter
        )
        st.acked = st.committed = position
        st.uncommitted = 0
        st.committed_at = self._clock.monotonic()
        try:
            if self.config.resync_on_start:
                await self._resync(st)
            while not self._stopping:
                for stored in await self._next_batch(st):
                    await self._deliver(st, stored)
                    if self._stopping:
                        return
                    await self._maybe_commit(st)
        finally:
            await self._final_commit(st)

    # -- reading --------------------------------------------------------------------------------

    async def _read(self, st: _Stream) -> list[StoredSample]:
        return await self._astore.call(self._astore.store.read, st.meter, st.acked, READ_BATCH)

    async def _next_batch(self, st: _Stream) -> list[StoredSample]:
        """The next samples after the acknowledged one; waits for an append when caught up."""
        batch = await self._read(st)
        if batch:
            return batch
        await self._commit(st)
        # Arm the wait BEFORE re-reading, so an append between the read and the wait is seen.
        waiter = asyncio.get_running_loop().create_task(
            self._astore.wait_appended(IDLE_RECHECK_SECS), name=f"{self.name}:{st.stream}:idle"
        )
        try:
            await asyncio.sleep(0)
            batch = await self._read(st)
            if not batch:
                await waiter
        finally:
            waiter.cancel()
        return batch

    # -- sending --------------------------------------------------------------------------------

    async def _deliver(self, st: _Stream, stored: StoredSample) -> None:
        """Send one sample until it is acknowledged or parked."""
        body = encode_sample(
            stored.sample, st.stream, self._tz, energy_per_phase=self.config.energy_per_phase
        )
        if body is None:
            self.skipped += 1
            self._acked(st, stored.rowid)
            return
        backoff: Backoff | None = None  # made on the first failure: the common path is short
        rejected = 0
        health = self._uplink_health
        while True:
            if self._gate.paused:
                await self._commit(st)
                await self._gate.wait_turn(st.stream, self.config.auth_probe_secs, self._clock)
            st.in_request = True
            try:
                verdict, answer = await self._post(body)
            finally:
                st.in_request = False
            if verdict.outcome is Outcome.OK:
                self._delivered(st, stored.rowid)
                return
            if self._stopping:
                raise asyncio.CancelledError  # shutting down: do not wait to retry
            health.last_error = verdict.detail
            health.last_error_ms = int(self._clock.time() * 1000)
            if verdict.outcome is Outcome.AUTH:
                health.retries += 1
                self._pause(st, verdict)
                continue
            self._failing(st, verdict)
            if verdict.outcome is Outcome.REJECT:
                rejected += 1
                if rejected >= self.config.max_attempts_rejected:
                    await self._park(
                        st, stored, body=body, verdict=verdict, answer=answer, attempts=rejected
                    )
                    return
            health.retries += 1
            await self._commit(st)
            backoff = backoff or self._backoff()
            await self._clock.sleep(backoff.next_delay(verdict.retry_after_secs))

    async def _post(self, body: bytes) -> tuple[Verdict, bytes]:
        session = self._open_session()
        async with self._semaphore:
            try:
                async with session.post(
                    self._url,
                    data=body,
                    headers=self._headers,
                    allow_redirects=False,
                ) as response:
                    try:
                        answer = await read_limited(response)
                    except TRANSPORT_ERRORS:
                        answer = b""  # the status line arrived: it decides
                    if classify_status(response.status) is Outcome.OK:
                        return Verdict(Outcome.OK, response.status), answer
                    verdict = classify_response(
                        response.status, response.headers, answer, now=self._clock.time()
                    )
                    return verdict, answer
            except TRANSPORT_ERRORS as exc:
                return classify_exception(exc), b""

    def _backoff(self) -> Backoff:
        return Backoff(self.config.retry_initial_secs, self.config.retry_max_secs, rng=self._rng)

    # -- outcomes -------------------------------------------------------------------------------

    def _delivered(self, st: _Stream, rowid: int) -> None:
        health = self._uplink_health
        if self._gate.reopen():
            health.paused_reason = None
            log.warning("%s: credentials accepted again; resuming delivery", self.name)
        health.delivered += 1
        health.last_success_ms = int(self._clock.time() * 1000)
        self._recovered(st)
        self._acked(st, rowid)

    def _acked(self, st: _Stream, rowid: int) -> None:
        st.acked = rowid
        st.uncommitted += 1

    def _failing(self, st: _Stream, verdict: Verdict) -> None:
        st.failures += 1
        if st.failing_since is None:
            st.failing_since = verdict.detail
            log.warning(
                "%s/%s: delivery failing (%s); retrying, next log on recovery",
                self.name,
                st.stream,
                verdict.detail,
            )

    def _recovered(self, st: _Stream) -> None:
        if st.failing_since is not None:
            log.warning(
                "%s/%s: delivery recovered after %d failed attempt(s)",
                self.name,
                st.stream,
                st.failures,
            )
        st.failing_since = None
        st.failures = 0

    def _pause(self, st: _Stream, verdict: Verdict) -> None:
        if not self._gate.close(st.stream):
            return
        reason = f"credentials refused ({verdict.detail})"
        self._uplink_health.paused_reason = reason
        self._health.alert(
            self.name,
            f"{reason}: delivery paused, data kept; probing every "
            f"{self.config.auth_probe_secs:g} s until the credentials are fixed",
        )

    async def _park(
        self,
        st: _Stream,
        stored: StoredSample,
        *,
        body: bytes,
        verdict: Verdict,
        answer: bytes,
        attempts: int,
    ) -> None:
        now_ms = int(self._clock.time() * 1000)
        await self._commit(st)
        await self._astore.call(
            self._astore.store.park,
            self.name,
            st.stream,
            stored.rowid,
            payload=body.decode(),
            status=verdict.status,
            body=answer.decode("utf-8", "replace"),
            attempts=attempts,
            now_ms=now_ms,
        )
        st.acked = st.committed = stored.rowid
        st.uncommitted = 0
        self._uplink_health.parked += 1
        when = local_iso8601_ms(stored.sample.ts_ms, self._tz)
        self._health.alert(
            self.name,
            f"stream {st.stream}: sample {stored.rowid} ({when}) refused {attempts} times "
            f"({verdict.detail}); parked in the dead-letter table",
        )

    # -- cursor ---------------------------------------------------------------------------------

    async def _maybe_commit(self, st: _Stream) -> None:
        if st.uncommitted >= self.config.commit_every_packets or (
            st.uncommitted
            and self._clock.monotonic() - st.committed_at >= self.config.commit_every_secs
        ):
            await self._commit(st)

    async def _commit(self, st: _Stream) -> None:
        if st.acked > st.committed:
            position = st.acked
            await self._astore.call(self._astore.store.advance, self.name, st.stream, position)
            st.committed = position
        st.uncommitted = 0
        st.committed_at = self._clock.monotonic()

    async def _final_commit(self, st: _Stream) -> None:
        """Commit the acknowledged prefix while stopping; a closed store is only logged."""
        try:
            await self._commit(st)
        except Exception:
            log.warning(
                "%s/%s: could not commit cursor %d at stop; up to %d packet(s) will be re-sent",
                self.name,
                st.stream,
                st.acked,
                st.acked - st.committed,
                exc_info=True,
            )

    # -- resync ---------------------------------------------------------------------------------

    async def _resync(self, st: _Stream) -> None:
        """Skip stored samples Wattics already processed (it would discard them anyway)."""
        last_ms = await self._last_processed_ms(st.stream)
        if last_ms is None:
            return
        skipped = 0
        while True:
            batch = await self._read(st)
            for stored in batch:
                if stored.sample.ts_ms > last_ms:
                    break
                st.acked = stored.rowid
                skipped += 1
            else:
                if len(batch) == READ_BATCH:
                    continue
            break
        if last_ms > self._clock.time() * 1000 + 3_600_000:
            log.warning(
                "%s/%s: Wattics' last packet is stamped %s, in the future: it discards every "
                "packet before that time (a clock that was wrong?)",
                self.name,
                st.stream,
                local_iso8601_ms(last_ms, self._tz),
            )
        if skipped:
            st.uncommitted = skipped
            await self._commit(st)
            log.info(
                "%s/%s: Wattics already has packets up to %s; skipped %d stored sample(s)",
                self.name,
                st.stream,
                local_iso8601_ms(last_ms, self._tz),
                skipped,
            )

    async def _last_processed_ms(self, stream: str) -> int | None:
        """Wattics' last processed packet time for `stream`; None when it cannot tell."""
        session = self._open_session()
        async with self._semaphore:
            try:
                async with session.get(
                    self._url.update_query(stream=stream),
                    headers={"Authorization": self._headers["Authorization"]},
                    allow_redirects=False,
                ) as response:
                    if response.status != 200:
                        log.info(
                            "%s/%s: no resync (GET answered %d)", self.name, stream, response.status
                        )
                        return None
                    answer = await read_limited(response, 1 << 20)
            except TRANSPORT_ERRORS as exc:
                log.info("%s/%s: no resync (%s)", self.name, stream, classify_exception(exc).detail)
                return None
        try:
            data = json.loads(answer)
        except ValueError:
            return None
        return last_timestamp_ms(data)
