"""Wattics uplink: one JSON packet per sample, each stream in time order, over one HTTP session.

Invariants (every change must keep them):
1. Per stream, packets leave in store order, which per meter is time order: packet n+1 is not
   sent before packet n was answered 200 or parked. Streams run concurrently (at most
   max_concurrency requests in flight) over ONE kept-alive aiohttp session.
2. A cursor never passes a packet that was neither answered 200 nor parked. Acknowledged
   positions are committed in group commits, every stream in one transaction
   (commit_every_packets of one stream, or commit_every_secs after the last group, and when
   stopping), so neither catch-up nor a quiet site costs an fsync per packet, and a crash
   re-sends at most one group. With resync_on_start the stream first asks Wattics
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
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Unpack

import yarl

from core.config_base import UplinkConfig
from core.health import Health
from core.sample import StoredSample
from gateway.net.policy import TRANSPORT_ERRORS, Verdict, classify_exception
from gateway.net.session import read_limited
from gateway.store.async_store import AsyncStore
from gateway.timefmt import local_iso8601_ms, zone
from gateway.uplinks.delivery import Attempt, DeliveryOptions, Refused, StreamProgress, StreamUplink
from gateway.uplinks.registry import UplinkContext
from gateway.uplinks.wattics.config import WatticsConfig, WatticsDatapointConfig
from gateway.uplinks.wattics.continuity import CounterContinuity
from gateway.uplinks.wattics.interval import IntervalPicker
from gateway.uplinks.wattics.packets import (
    basic_auth,
    encode_sample,
    encode_value,
    last_timestamp_ms,
)

log = logging.getLogger(__name__)

#: Samples read from the store per query.
READ_BATCH: Final = 500
#: ... and at most about this many samples read ahead by all streams together: ten meters
#: catching up must not hold 5000 decoded samples (a Pi's RSS budget), one may read 500.
READ_AHEAD_TOTAL: Final = 1000
MIN_READ_BATCH: Final = 20
#: A caught-up stream re-reads the store at least this often even without an append signal.
IDLE_RECHECK_SECS: Final = 30.0


@dataclass(kw_only=True)
class _Stream(StreamProgress):
    point: WatticsDatapointConfig
    picker: IntervalPicker[StoredSample] | None = None
    #: Last row read from the store (may run ahead of `acked` while a sample is pending).
    read_pos: int = 0
    acked: int = 0
    committed: int = 0
    uncommitted: int = 0
    #: Packets stamped at or before this (Wattics' last processed one) are not sent again.
    skip_until_ms: int | None = None
    resync_skipped: int = 0
    #: Lifetime counters kept continuous across meter swaps (committed with the cursor).
    continuity: CounterContinuity = field(default_factory=CounterContinuity)
    #: The stamp of the packet being sent (for "did it arrive?" after a lost answer).
    sending_ts_ms: int | None = None


def _continuity_key(stream: str) -> str:
    return f"continuity:{stream}"


# -- the uplink ---------------------------------------------------------------------------------


class WatticsUplink(StreamUplink[WatticsConfig, _Stream]):
    """Delivers configured datapoints' samples to Wattics; see the module invariants."""

    def __init__(
        self,
        config: WatticsConfig,
        *,
        store: AsyncStore,
        health: Health,
        timezone: str,
        name: str = "wattics",
        **options: Unpack[DeliveryOptions],
    ) -> None:
        super().__init__(
            config, name=name, store=store, health=health, timezone=timezone, **options
        )
        # Packets are rendered in site time, or in UTC on the UTC route.
        self._tz = zone("UTC") if config.timestamps == "utc" else self._site_tz
        # Secret: only ever sent as a header; never logged, never put into health or alerts.
        self._headers = {
            "Content-Type": "application/json",
            "Authorization": basic_auth(
                config.username.get_secret_value(), config.password.get_secret_value()
            ),
        }
        self._url = yarl.URL(config.post_url())
        self._points: dict[str, WatticsDatapointConfig] = {}
        for point in config.all_datapoints():
            if point.id in self._points:
                raise ValueError(
                    f"Wattics stream {point.id!r} is configured for two meters "
                    f"({self._points[point.id].meter!r} and {point.meter!r})"
                )
            self._points[point.id] = point
        self._read_batch = max(
            MIN_READ_BATCH, min(READ_BATCH, READ_AHEAD_TOTAL // max(1, len(self._points)))
        )
        self.skipped = 0  # samples with nothing this datapoint takes, or between boundaries
        self._resync_fallback_logged = False
        #: Streams whose acknowledged position waits for the next group commit.
        self._dirty: dict[str, _Stream] = {}
        self._group_committed_at = self._clock.monotonic()
        self._commit_lock = asyncio.Lock()

    def streams(self) -> dict[str, str]:
        """Wattics datapoint id -> the meter feeding it."""
        return {stream: point.meter for stream, point in self._points.items()}

    def _new_picker(self, point: WatticsDatapointConfig) -> IntervalPicker[StoredSample] | None:
        """The boundary picker of a datapoint with a registered interval (None: every sample)."""
        if point.interval_secs is None:
            return None
        return IntervalPicker(
            interval_ms=round(point.interval_secs * 1000),
            tolerance_ms=round((point.tolerance_secs or 0.0) * 1000),
            wait_ms=round(self.config.boundary_wait_secs * 1000),
            tz=self._site_tz,
        )

    def _describe_target(self) -> str:
        where = self._url.with_user(None).with_query(None)
        return f"{len(self._points)} datapoint(s) to {where}"

    def _new_streams(self) -> dict[str, _Stream]:
        return {
            stream: _Stream(stream, point.meter, point=point)
            for stream, point in self._points.items()
        }

    async def _run_stream(self, st: _Stream) -> None:
        position = await self._astore.register_stream(self.name, st.stream, st.meter)
        st.acked = st.committed = st.read_pos = position
        st.uncommitted = 0
        # A (re)start decides boundaries and resync afresh from the cursor.
        st.picker, st.skip_until_ms = self._new_picker(st.point), None
        if self.config.counter_continuity:
            st.continuity = CounterContinuity.load(
                await self._astore.state(self.name, _continuity_key(st.stream))
            )
        try:
            if self.config.resync_on_start:
                await self._resync(st)
            while not self._stopping:
                items = await self._next_items(st)
                # Operator-re-queued items go before anything newer (checked on every wake).
                await self._send_requeued(st)
                for stored, stamp in items:
                    await self._deliver(st, stored, stamp)
                    if self._stopping:
                        return
                    await self._maybe_commit(st)
        finally:
            await self._final_commit(st)

    # -- reading --------------------------------------------------------------------------------

    async def _read(self, st: _Stream) -> list[StoredSample]:
        return await self._astore.read(st.meter, st.read_pos, self._read_batch)

    def _decide(self, st: _Stream, batch: list[StoredSample]) -> list[tuple[StoredSample, int]]:
        """(sample, packet time) for each sample in order; -1: pass over, send nothing."""
        if batch:
            st.read_pos = batch[-1].rowid
        if st.picker is None:
            return [(stored, stored.sample.ts_ms) for stored in batch]
        decided: list[tuple[StoredSample, int]] = []
        for stored in batch:
            for item, stamp in st.picker.offer(stored):
                decided.append((item, -1 if stamp is None else stamp))
        return decided

    def _expired(self, st: _Stream) -> list[tuple[StoredSample, int]]:
        if st.picker is None:
            return []
        now_ms = int(self._clock.time() * 1000)
        return [(item, -1 if s is None else s) for item, s in st.picker.expire(now_ms)]

    async def _next_items(self, st: _Stream) -> list[tuple[StoredSample, int]]:
        """The next decisions after the last read sample; waits for an append (or for a
        pending boundary's deadline) when caught up."""
        batch = await self._read(st)
        if batch:
            return self._decide(st, batch)
        expired = self._expired(st)
        if expired:
            return expired
        await self._commit(st)
        timeout = IDLE_RECHECK_SECS
        deadline = st.picker.deadline_ms() if st.picker is not None else None
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline / 1000 - self._clock.time()) + 0.01)
        commit_due = self._group_commit_due_in()
        if commit_due is not None:
            timeout = min(timeout, commit_due + 0.01)
        # Arm the wait BEFORE re-reading, so an append between the read and the wait is seen.
        waiter = asyncio.get_running_loop().create_task(
            self._astore.wait_appended(timeout), name=f"{self.name}:{st.stream}:idle"
        )
        try:
            await asyncio.sleep(0)
            batch = await self._read(st)
            if not batch:
                await self._clock.race(waiter)
        finally:
            waiter.cancel()
        if not batch:
            await self._commit(st)  # the group commit may have come due while waiting
        return self._decide(st, batch) if batch else self._expired(st)

    # -- sending --------------------------------------------------------------------------------

    def _encode(self, st: _Stream, stored: StoredSample, ts_ms: int) -> bytes | None:
        point = st.point
        if point.channel is None:
            return encode_sample(
                stored.sample,
                st.stream,
                self._tz,
                energy_per_phase=self.config.energy_per_phase,
                ts_ms=ts_ms,
            )
        return encode_value(
            stored.sample, st.stream, point.channel, self._tz, scale=point.scale, ts_ms=ts_ms
        )

    async def _deliver(self, st: _Stream, stored: StoredSample, ts_ms: int) -> None:
        """Send one sample (as a packet stamped `ts_ms`) until acknowledged or parked."""
        if self.config.counter_continuity:
            stored = StoredSample(stored.rowid, st.continuity.apply(stored.sample))
        body = None
        if ts_ms >= 0 and not (st.skip_until_ms is not None and ts_ms <= st.skip_until_ms):
            body = self._encode(st, stored, ts_ms)
        elif ts_ms >= 0:
            st.resync_skipped += 1
        if body is None:
            self.skipped += 1
            self._acked(st, stored.rowid)
            return
        st.sending_ts_ms = ts_ms
        try:
            await self._settle(st, self._sender(body))
        except Refused as refused:
            await self._park_sample(st, stored, body=body, refused=refused)
            return
        finally:
            st.sending_ts_ms = None
        try:
            self._delivered(st, stored.rowid)
        finally:
            st.in_request = False

    def _sender(self, body: bytes) -> Callable[[], Awaitable[Attempt]]:
        return lambda: self._post(self._url, body, self._headers)

    # -- the delivery core's hooks ------------------------------------------------------------

    async def _before_attempt(self, st: _Stream) -> None:
        if self._gate.paused:
            await self._commit(st)  # what was acknowledged before the pause stays acknowledged
        await super()._before_attempt(st)

    async def _arrived_anyway(self, st: _Stream, attempt: Attempt) -> bool:
        """With resync_on_start, ask Wattics for its last packet: a packet it already has
        counts as delivered rather than being sent twice."""
        ts_ms = st.sending_ts_ms
        if ts_ms is None or not self.config.resync_on_start:
            return False
        last_ms = await self._last_processed_ms(st.stream)
        if last_ms is None or last_ms < ts_ms:
            return False
        log.info(
            "%s/%s: no answer (%s), but Wattics has the packet: not sent again",
            self.name,
            st.stream,
            attempt.verdict.detail,
        )
        return True

    async def _wait_to_retry(self, st: _Stream, delay: float, verdict: Verdict) -> None:
        await self._commit(st)
        await super()._wait_to_retry(st, delay, verdict)

    # -- outcomes -------------------------------------------------------------------------------

    def _delivered(self, st: _Stream, rowid: int) -> None:
        health = self._uplink_health
        health.delivered += 1
        health.last_success_ms = self._now_ms()
        self._acked(st, rowid)

    def _acked(self, st: _Stream, rowid: int) -> None:
        st.acked = rowid
        st.uncommitted += 1

    async def _park_sample(
        self, st: _Stream, stored: StoredSample, *, body: bytes, refused: Refused
    ) -> None:
        await self._commit(st)
        when = local_iso8601_ms(stored.sample.ts_ms, self._site_tz)
        await self._park(
            st,
            stored.rowid,
            payload=body,
            refused=refused,
            what=f"stream {st.stream}: sample {stored.rowid} ({when})",
            state=self._continuity_state(st),
        )
        st.acked = st.committed = stored.rowid
        st.uncommitted = 0

    async def _send_requeued(self, st: _Stream) -> None:
        """Send the dead letters an operator re-queued (`meter-gateway deadletters --requeue`),
        oldest first, before new samples. Wattics discards a packet older than the stream's
        last one, so the CLI warns when a re-queued packet is older than what was sent since.
        """
        letters = await self._astore.requeued_letters(self.name, st.stream)
        for letter in letters:
            if self._stopping:
                return
            try:
                await self._settle(st, self._sender(letter.payload.encode()))
            except Refused as refused:
                await self._astore.repark(
                    letter.id,
                    status=refused.verdict.status,
                    body=refused.answer.decode("utf-8", "replace"),
                    attempts=refused.attempts,
                    now_ms=self._now_ms(),
                )
                self._health.alert(
                    self.name,
                    f"stream {st.stream}: re-queued dead letter #{letter.id} refused again "
                    f"({refused.verdict.detail}); parked again",
                )
                continue
            finally:
                st.in_request = False
            await self._astore.forget_dead_letter(letter.id)
            self._uplink_health.delivered += 1
            log.info("%s/%s: re-queued dead letter #%d delivered", self.name, st.stream, letter.id)

    # -- cursor ---------------------------------------------------------------------------------

    async def _maybe_commit(self, st: _Stream) -> None:
        if st.uncommitted:
            await self._commit(st, now=st.uncommitted >= self.config.commit_every_packets)

    async def _commit(self, st: _Stream, *, now: bool = False) -> None:
        """Make `st`'s acknowledged position durable with the uplink's next group commit.

        One transaction carries every stream's cursor, at most every commit_every_secs (at
        once with `now`: a full group during catch-up, or stopping). A cursor lagging by a few
        seconds costs at most a re-send after a crash, which resync skips and Wattics would
        discard anyway; one fsync per packet and stream would cost an SD card gigabytes a day.
        """
        if st.acked > st.committed:
            self._dirty[st.stream] = st
        due = self._clock.monotonic() - self._group_committed_at >= self.config.commit_every_secs
        if self._dirty and (now or due):
            await self._commit_group()

    def _group_commit_due_in(self) -> float | None:
        """Seconds until uncommitted positions are due (None: nothing waits)."""
        if not self._dirty:
            return None
        elapsed = self._clock.monotonic() - self._group_committed_at
        return max(0.0, self.config.commit_every_secs - elapsed)

    async def _commit_group(self) -> None:
        async with self._commit_lock:
            dirty, self._dirty = self._dirty, {}
            streams = [st for st in dirty.values() if st.acked > st.committed]
            rows = [(st.stream, st.acked, self._continuity_state(st)) for st in streams]
            try:
                if rows:
                    await self._astore.advance_many(self.name, rows)
            except BaseException:
                self._dirty = {**dirty, **self._dirty}
                raise
            for st, (_, position, _) in zip(streams, rows, strict=True):
                st.committed = position
                st.uncommitted = 0
            self._group_committed_at = self._clock.monotonic()

    def _continuity_state(self, st: _Stream) -> dict[str, str] | None:
        """The counter-continuity state to commit with the cursor (None: nothing to keep)."""
        if not self.config.counter_continuity or not st.continuity.last:
            return None
        return {_continuity_key(st.stream): st.continuity.dump()}

    async def _final_commit(self, st: _Stream) -> None:
        """Commit the acknowledged prefix while stopping; a closed store is only logged."""
        try:
            await self._commit(st, now=True)
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
        """Skip packets Wattics already processed (it would discard them anyway): packets
        stamped at or before its last one are passed over, not sent."""
        last_ms = await self._last_processed_ms(st.stream)
        if last_ms is None:
            return
        st.skip_until_ms = last_ms
        if last_ms > self._clock.time() * 1000 + 3_600_000:
            log.warning(
                "%s/%s: Wattics' last packet is stamped %s, in the future: it discards every "
                "packet before that time (a clock that was wrong?)",
                self.name,
                st.stream,
                local_iso8601_ms(last_ms, self._site_tz),
            )
        else:
            log.info(
                "%s/%s: Wattics has packets up to %s; stored samples up to then are not re-sent",
                self.name,
                st.stream,
                local_iso8601_ms(last_ms, self._site_tz),
            )

    def _no_resync(self, stream: str, why: str) -> None:
        """Say once per run that delivery falls back to at-least-once, and why."""
        if not self._resync_fallback_logged:
            self._resync_fallback_logged = True
            log.warning(
                "%s: cannot ask Wattics for its last packet (%s, stream %s): delivery is "
                "at-least-once; after a crash up to one commit group per stream may be sent "
                "twice (Wattics discards those as out of order)",
                self.name,
                why,
                stream,
            )
        else:
            log.debug("%s/%s: no resync (%s)", self.name, stream, why)

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
                    if response.status == 404:
                        return None  # the stream has no packet yet: nothing to skip
                    if response.status != 200:
                        self._no_resync(stream, f"GET answered {response.status}")
                        return None
                    answer = await read_limited(response, 1 << 20)
            except TRANSPORT_ERRORS as exc:
                self._no_resync(stream, classify_exception(exc).detail)
                return None
        try:
            data = json.loads(answer)
        except (ValueError, RecursionError):  # nested beyond the parser: not JSON to us
            self._no_resync(stream, "the answer is not JSON")
            return None
        last = last_timestamp_ms(data)
        if last is None:
            self._no_resync(stream, "no tsISO8601 in the answer")
        return last


def build_uplink(section: UplinkConfig, context: UplinkContext) -> WatticsUplink:
    """Registered for `uplinks.wattics` (gateway.uplinks.wattics.config)."""
    assert isinstance(section, WatticsConfig)
    return WatticsUplink(
        section,
        store=context.store,
        health=context.health,
        timezone=context.config.gateway.timezone,
    )
