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
3. Nothing is dropped for a transient failure or a refusal ("retry transmission until you get
   status=200"): RETRY re-sends the SAME packet after a jittered backoff (a 2xx that is not
   a Wattics answer, e.g. a captive portal's HTML page, is a RETRY too, counted); 401 (the
   account's credentials) pauses every stream, alerts once and probes every auth_probe_secs;
   404 (datapoint not registered) and 403 (not allowed for this user) pause THAT stream
   only, with one alert naming the datapoint, and probe it with a backoff capped at
   auth_probe_secs, the other streams go on. A packet refused as malformed (400, another
   4xx) max_attempts_rejected times is set aside; it is parked in the dead-letter table only
   once a later packet of the same stream is accepted (then it alone is bad). When the later
   packet is refused too, the stream pauses and probes with the older one: nothing parked.
4. On cancellation, waiting streams stop at once; a request in flight may finish within
   shutdown_grace_secs (then it is abandoned, never acknowledged); the acknowledged prefix is
   committed and the session closed.
5. The password and the Authorization header are never logged or put into health.
6. With a registered interval, the last boundary decided and the last accepted packet's time
   are committed with the cursor, so a restart resumes the boundary picker where it stopped
   (no hole a stored sample within the tolerance could fill) and a re-queued dead letter
   older than the last accepted packet is refused instead of being silently discarded.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, Unpack

import yarl

from core.backoff import Backoff
from core.config_base import UplinkConfig
from core.health import Health
from core.sample import StoredSample
from gateway.net.policy import (
    Outcome,
    Verdict,
    is_misdirected,
)
from gateway.store.async_store import AsyncStore
from gateway.timefmt import local_iso8601_ms, zone
from gateway.uplinks.delivery import Attempt, DeliveryOptions, Refused, StreamUplink
from gateway.uplinks.registry import UplinkContext
from gateway.uplinks.wattics.commits import GroupCommits
from gateway.uplinks.wattics.config import WatticsConfig, WatticsDatapointConfig
from gateway.uplinks.wattics.continuity import CounterContinuity
from gateway.uplinks.wattics.interval import IntervalPicker
from gateway.uplinks.wattics.lastpacket import LastPacket, last_processed_ms
from gateway.uplinks.wattics.packets import basic_auth, encode_sample, encode_value
from gateway.uplinks.wattics.stream import (
    Suspect,
    WatticsStream,
    accepted_key,
    boundary_key,
    committed_state,
    continuity_key,
    not_a_wattics_answer,
    packet_time_ms,
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


# -- the uplink ---------------------------------------------------------------------------------


class WatticsUplink(StreamUplink[WatticsConfig, WatticsStream]):
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
        self._lastpacket = LastPacket(self.name, self._site_tz, self._clock, self._ask_last_packet)
        #: Streams whose acknowledged position waits for the next group commit.
        self._commits = GroupCommits(
            self.name,
            store,
            self._clock,
            config.commit_every_secs,
            lambda st: committed_state(st, counter_continuity=config.counter_continuity),
        )
        self._live: dict[str, WatticsStream] = {}

    def streams(self) -> dict[str, str]:
        """Wattics datapoint id -> the meter feeding it."""
        return {stream: point.meter for stream, point in self._points.items()}

    def acknowledged(self) -> dict[str, int]:
        """stream -> the position acknowledged so far, committed or not (backlog figures)."""
        return {stream: st.acked for stream, st in self._live.items()}

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

    def _new_streams(self) -> dict[str, WatticsStream]:
        self._live = {
            stream: WatticsStream(stream, point.meter, point=point)
            for stream, point in self._points.items()
        }
        return self._live

    async def _run_stream(self, st: WatticsStream) -> None:
        position = await self._astore.register_stream(self.name, st.stream, st.meter)
        st.acked = st.committed = st.read_pos = position
        st.uncommitted = 0
        st.suspect, st.deferred_ack = None, 0
        st.requeue_seen = None
        # A (re)start resumes the boundary picker from what was committed with the cursor.
        st.picker, st.skip_until_ms = self._new_picker(st.point), None
        await self._resume_picker(st, position)
        accepted = await self._astore.state(self.name, accepted_key(st.stream))
        st.accepted_ts_ms = int(accepted) if accepted else None
        if self.config.counter_continuity:
            st.continuity = CounterContinuity.load(
                await self._astore.state(self.name, continuity_key(st.stream))
            )
        try:
            if self.config.resync_on_start:
                last_ms = await self._lastpacket.resync(st.stream)
                if last_ms is not None:
                    st.skip_until_ms = last_ms
                    st.accepted_ts_ms = max(st.accepted_ts_ms or last_ms, last_ms)
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

    async def _resume_picker(self, st: WatticsStream, position: int) -> None:
        """Give the picker the last boundary decided and the sample at the cursor."""
        if st.picker is None:
            return
        saved = await self._astore.state(self.name, boundary_key(st.stream))
        st.boundary_ms = int(saved) if saved else None
        if st.boundary_ms is None or position <= 0:
            return
        rows = await self._astore.read(st.meter, position - 1, 1)
        carry = rows[0] if rows and rows[0].rowid == position else None
        st.picker.resume(st.boundary_ms, carry)

    # -- reading --------------------------------------------------------------------------------

    async def _read(self, st: WatticsStream) -> list[StoredSample]:
        batch, st.read_pos = await self._astore.read_new(st.meter, st.read_pos, self._read_batch)
        return batch

    def _decide(
        self, st: WatticsStream, batch: list[StoredSample]
    ) -> list[tuple[StoredSample, int]]:
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

    def _expired(self, st: WatticsStream) -> list[tuple[StoredSample, int]]:
        if st.picker is None:
            return []
        now_ms = int(self._clock.time() * 1000)
        return [(item, -1 if s is None else s) for item, s in st.picker.expire(now_ms)]

    async def _next_items(self, st: WatticsStream) -> list[tuple[StoredSample, int]]:
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
        commit_due = self._commits.due_in()
        if commit_due is not None:
            timeout = min(timeout, commit_due + 0.01)
        # Only this meter's appends wake it, armed right after the check (none missed).
        if not self._astore.has_after(st.meter, st.read_pos):
            await self._clock.race(self._astore.wait_appended(timeout, meter=st.meter))
        batch = await self._read(st)
        if not batch:
            await self._commit(st)  # the group commit may have come due while waiting
        return self._decide(st, batch) if batch else self._expired(st)

    # -- sending --------------------------------------------------------------------------------

    def _encode(self, st: WatticsStream, stored: StoredSample, ts_ms: int) -> bytes | None:
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

    async def _deliver(self, st: WatticsStream, stored: StoredSample, ts_ms: int) -> None:
        """Send one sample (as a packet stamped `ts_ms`) until acknowledged or set aside."""
        if self.config.counter_continuity:
            stored = StoredSample(stored.rowid, st.continuity.apply(stored.sample))
        body = None
        if ts_ms >= 0 and not (st.skip_until_ms is not None and ts_ms <= st.skip_until_ms):
            body = self._encode(st, stored, ts_ms)
        elif ts_ms >= 0:
            st.resync_skipped += 1
        if body is None:
            self.skipped += 1
            self._acked(st, stored.rowid, ts_ms)
            return
        accepted_by_probe = False
        while not accepted_by_probe:
            st.sending_ts_ms = ts_ms
            try:
                await self._settle(st, self._sender(body))
                break
            except Refused as refused:
                if st.suspect is None:
                    self._set_aside(st, Suspect(stored, body, ts_ms, refused))
                    return
                # A later packet is refused too: the stream, not one packet, is refused.
                accepted_by_probe = await self._probe_refused_stream(st, refused, body, ts_ms)
            finally:
                st.sending_ts_ms = None
        try:
            if st.suspect is not None:
                # A fact about Wattics, committed with the park: the suspect is now older.
                st.accepted_ts_ms = max(st.accepted_ts_ms or ts_ms, ts_ms)
                await self._park_suspect(st)
            self._delivered(st, stored.rowid, ts_ms)
        finally:
            st.in_request = False

    def _set_aside(self, st: WatticsStream, suspect: Suspect) -> None:
        """A packet refused as malformed: parked only if a later one is accepted."""
        st.suspect = suspect
        log.warning(
            "%s/%s: sample %d refused %d times (%s); sending the next packet: if Wattics "
            "accepts it, this one is parked in the dead-letter table",
            self.name,
            st.stream,
            suspect.stored.rowid,
            suspect.refused.attempts,
            suspect.refused.verdict.detail,
        )

    async def _probe_refused_stream(
        self, st: WatticsStream, refused: Refused, later: bytes, later_ts: int
    ) -> bool:
        """Two packets in a row refused: pause the stream (one alert), then probe in rounds,
        the older packet first, then the later one, one attempt each, so that a fix at
        Wattics between the two is seen in the right order. Returns True when the later
        packet was accepted while the older one is still refused (it alone is bad: the
        caller parks it); False when the older one was accepted (the stream goes on)."""
        suspect = st.suspect
        assert suspect is not None
        self._uplink_health.retries += 1
        reason = f"Wattics refuses every packet of datapoint {st.stream} ({refused.verdict.detail})"
        while True:
            await self._pause_stream(st, reason)
            for packet, stamp in ((suspect.body, suspect.ts_ms), (later, later_ts)):
                st.sending_ts_ms = stamp
                try:
                    await self._settle(st, self._sender(packet), max_rejected=1)
                except Refused:
                    continue
                finally:
                    st.in_request = False
                if packet is later:
                    st.in_request = True  # the caller records the delivery
                    return True
                st.suspect = None
                self._delivered(st, suspect.stored.rowid, suspect.ts_ms)
                self._apply_deferred(st)
                return False

    async def _park_suspect(self, st: WatticsStream) -> None:
        suspect, st.suspect = st.suspect, None
        assert suspect is not None
        await self._park_sample(st, suspect.stored, body=suspect.body, refused=suspect.refused)
        if suspect.ts_ms >= 0:
            st.boundary_ms = max(st.boundary_ms or suspect.ts_ms, suspect.ts_ms)
        self._apply_deferred(st)

    @staticmethod
    def _apply_deferred(st: WatticsStream) -> None:
        """Positions passed while a packet was set aside count once it is resolved."""
        if st.deferred_ack > st.acked:
            st.acked = st.deferred_ack
            st.uncommitted += 1
        st.deferred_ack = 0

    def _sender(self, body: bytes) -> Callable[[], Awaitable[Attempt]]:
        return lambda: self._post_checked(body)

    async def _post_checked(self, body: bytes) -> Attempt:
        """One push; a 2xx that is not Wattics' (invariant 3) is a counted RETRY."""
        seen: list[str] = []
        attempt = await self._post(
            self._url, body, self._headers, observe=lambda r: seen.append(r.content_type)
        )
        if attempt.verdict.outcome is not Outcome.OK:
            return attempt
        problem = not_a_wattics_answer(seen[0] if seen else "", attempt.answer)
        if problem is None:
            return attempt
        facts = self._uplink_health.facts
        facts["unexpected_answers"] = int(facts.get("unexpected_answers", 0)) + 1
        status = attempt.verdict.status
        return Attempt(Verdict(Outcome.RETRY, status, None, f"HTTP {status}: {problem}"))

    # -- the delivery core's hooks ------------------------------------------------------------

    async def _before_attempt(self, st: WatticsStream) -> None:
        if self._gate.paused:
            await self._commit(st)  # what was acknowledged before the pause stays acknowledged
        await super()._before_attempt(st)

    async def _credentials_refused(self, st: WatticsStream, attempt: Attempt) -> None:
        """401: the account's credentials (one set for every datapoint): pause all.
        403: "not allowed to the user": this datapoint only."""
        if attempt.verdict.status == 403:
            await self._pause_stream(
                st,
                f"Wattics forbids datapoint {st.stream} to this user ({attempt.verdict.detail})",
            )
            return
        await super()._credentials_refused(st, attempt)

    async def _misdirected(self, st: WatticsStream, attempt: Attempt) -> bool:
        """404: the datapoint is not registered ("must be registered with Wattics before
        measurements are pushed"), or the url is wrong: pause this stream, keep its data."""
        if not is_misdirected(attempt.verdict):
            return False
        await self._pause_stream(
            st,
            f"Wattics does not know datapoint {st.stream} ({attempt.verdict.detail}): register "
            "it with Wattics (or check uplinks.wattics.url)",
        )
        return True

    async def _pause_stream(self, st: WatticsStream, reason: str) -> None:
        """Pause one stream: one alert naming it, then wait a backoff capped at
        auth_probe_secs before the caller probes with the same packet."""
        if st.paused_reason is None:
            st.paused_reason = reason
            st.pause_backoff = Backoff(
                self.config.retry_initial_secs, self.config.auth_probe_secs, rng=self._rng
            )
            self._publish_paused()
            self._health.alert(
                self.name,
                f"{reason}: delivery of this datapoint paused, data kept, others go on; "
                f"trying again with a backoff up to {self.config.auth_probe_secs:g} s",
            )
        await self._commit(st, now=True)
        assert st.pause_backoff is not None
        await self._clock.sleep(st.pause_backoff.next_delay())

    def _publish_paused(self) -> None:
        paused = {stream: st.paused_reason for stream, st in self._live.items() if st.paused_reason}
        self._uplink_health.facts["paused_datapoints"] = paused

    def _recovered(self, st: WatticsStream) -> None:
        super()._recovered(st)
        if st.paused_reason is not None:
            log.warning(
                "%s/%s: Wattics accepts this datapoint again; resuming", self.name, st.stream
            )
            st.paused_reason, st.pause_backoff = None, None
            self._publish_paused()

    async def _arrived_anyway(self, st: WatticsStream, attempt: Attempt) -> bool:
        """With resync_on_start, ask Wattics for its last packet: a packet it already has
        counts as delivered rather than being sent twice."""
        ts_ms = st.sending_ts_ms
        if ts_ms is None or not self.config.resync_on_start:
            return False
        last_ms = await self._lastpacket.last_ms(st.stream)
        if last_ms is None or last_ms < ts_ms:
            return False
        log.info(
            "%s/%s: no answer (%s), but Wattics has the packet: not sent again",
            self.name,
            st.stream,
            attempt.verdict.detail,
        )
        return True

    async def _wait_to_retry(self, st: WatticsStream, delay: float, verdict: Verdict) -> None:
        await self._commit(st)
        await super()._wait_to_retry(st, delay, verdict)

    # -- outcomes -------------------------------------------------------------------------------

    def _delivered(self, st: WatticsStream, rowid: int, ts_ms: int) -> None:
        health = self._uplink_health
        health.delivered += 1
        health.last_success_ms = self._now_ms()
        st.accepted_ts_ms = max(st.accepted_ts_ms or ts_ms, ts_ms)
        self._acked(st, rowid, ts_ms)

    def _acked(self, st: WatticsStream, rowid: int, ts_ms: int = -1) -> None:
        """A position is done (delivered or passed over); never past a set-aside packet."""
        if st.suspect is not None:
            st.deferred_ack = max(st.deferred_ack, rowid)
            return
        st.acked = max(st.acked, rowid)
        if ts_ms >= 0:
            st.boundary_ms = max(st.boundary_ms or ts_ms, ts_ms)
        st.uncommitted += 1

    async def _park_sample(
        self, st: WatticsStream, stored: StoredSample, *, body: bytes, refused: Refused
    ) -> None:
        await self._commit(st)
        when = local_iso8601_ms(stored.sample.ts_ms, self._site_tz)
        await self._park(
            st,
            stored.rowid,
            payload=body,
            refused=refused,
            what=f"stream {st.stream}: sample {stored.rowid} ({when})",
            state=committed_state(st, counter_continuity=self.config.counter_continuity),
        )
        st.acked = st.committed = stored.rowid
        st.uncommitted = 0

    async def _send_requeued(self, st: WatticsStream) -> None:
        """Send the dead letters an operator re-queued (`meter-gateway deadletters --requeue`),
        oldest first, before new samples. Wattics discards a packet older than the stream's
        last one, so the CLI warns when a re-queued packet is older than what was sent since.
        """
        if (generation := self._astore.requeue_generation()) == st.requeue_seen:
            return  # nothing re-queued since the stream last looked: no query
        st.requeue_seen = generation
        letters = await self._astore.requeued_letters(self.name, st.stream)
        for letter in letters:
            if self._stopping:
                return
            stamp = packet_time_ms(letter.payload)
            if st.accepted_ts_ms is not None and (stamp is None or stamp <= st.accepted_ts_ms):
                await self._astore.repark(
                    letter.id,
                    status=letter.status,
                    body=letter.body,
                    attempts=0,
                    now_ms=self._now_ms(),
                )
                self._health.alert(
                    self.name,
                    f"stream {st.stream}: re-queued dead letter #{letter.id} not sent: it is "
                    "not later than the last packet Wattics accepted for this datapoint, and "
                    "Wattics discards packets not sent chronologically; parked again",
                )
                continue
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
            if stamp is not None:
                st.accepted_ts_ms = max(st.accepted_ts_ms or stamp, stamp)
            self._uplink_health.delivered += 1
            log.info("%s/%s: re-queued dead letter #%d delivered", self.name, st.stream, letter.id)

    # -- cursor ---------------------------------------------------------------------------------

    async def _maybe_commit(self, st: WatticsStream) -> None:
        if st.uncommitted:
            await self._commit(st, now=st.uncommitted >= self.config.commit_every_packets)

    async def _commit(self, st: WatticsStream, *, now: bool = False) -> None:
        """Make `st`'s acknowledged position durable with the next group commit."""
        await self._commits.commit(st, now=now)

    async def _final_commit(self, st: WatticsStream) -> None:
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

    async def _ask_last_packet(self, stream: str) -> int | str | None:
        async with self._semaphore:
            return await last_processed_ms(
                self._open_session(), self._url, self._headers["Authorization"], stream
            )


def build_uplink(section: UplinkConfig, context: UplinkContext) -> WatticsUplink:
    """Registered for `uplinks.wattics` (gateway.uplinks.wattics.config)."""
    assert isinstance(section, WatticsConfig)
    return WatticsUplink(
        section,
        store=context.store,
        health=context.health,
        timezone=context.config.gateway.timezone,
    )
