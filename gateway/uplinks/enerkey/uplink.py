"""EnerKey uplink: one meter per message, hourly cumulative readings (default) or consumption.

What is sent (the defaults; EnerKey does not publish paths or body, so config can rename every
path and field — `cumulative_path`, `consumption_path`, `fields`, `authorization_prefix`):

    POST https://api.enerkey.com/api/v2/Values/PushCumulativeReadingsForMeter
         (consumption meters: .../api/v2/Values/PushConsumptionsForMeter)
    Authorization: <API key A or B, as is>
    Content-Type: application/json
    {"meterId":4711,"values":[{"timestamp":"2024-03-31T00:00:00Z","value":1234.567},...]}

- `meterId`: the configured EnerKey meter id (a JSON number, or a string if configured as one).
- `timestamp`: a UTC hour boundary, `Z` form (or site-local with its offset when
  `timestamp_format: offset`); never minutes or seconds. Cumulative: the counter AT that
  instant. Consumption: the energy of the hour that STARTS there (`consumption_timestamp:
  hour_end` stamps the end instead).
- `value`: in the meter's configured unit (stored Wh divided into kWh by default), rounded to
  `decimals`; consumption is the difference of consecutive rounded hourly readings.
- Flagged samples (gateway.uplinks.enerkey.hourly): `clock_unsynced` ones are never used. Across a
  `counter_reset`/`counter_jump` nothing is interpolated (a reported gap); consumption leaves
  out the hour in which the counter started a new series (alert, `hours_missing`); cumulative
  sends the new series' readings as read, with an alert to record the meter change in EnerKey.
- Hours in time order, one meter per message, a message spans less than
  `max_days_per_message` (365) days: a backlog goes in few large messages.

Invariants (every change must keep them):
1. An hour is decided from stored samples only (gateway.uplinks.enerkey.hourly): exact or
   interpolated within `max_interpolation_gap_secs`, never extrapolated; a longer gap leaves the
   hour out and is alerted. Per meter, hours leave in time order, each in exactly one message.
2. A stream's cursor, its state (next hour, last reading) and the `delivered_hours` rows of a
   message move in ONE store transaction, only after EnerKey answered 2xx (or the message was
   parked). After a restart the stream resumes at the next undelivered hour.
3. No hour is sent twice unless EnerKey said it did not take it (EnerKey SUMS values of one
   hour, consumption and cumulative alike): a message is recorded in flight before it is sent
   (gateway.uplinks.enerkey.inflight); an answer lost after the request may have arrived, a
   502/504, or an in-flight record found at start is an unknown outcome: the message is held
   in the dead-letter table for a human, alerted and counted (`unknown_outcomes`), never
   re-sent by itself. Hours already recorded as delivered are dropped before a message goes.
4. Nothing is dropped for a transient failure or refused keys: an answer that EnerKey did
   not take it (500, 503, no connection) retries the SAME message with jittered backoff;
   401/403 switch to the other key at once (alert naming the key by its label A/B); both
   refused pause every stream (alert) and probe every auth_probe_secs; 404/405 (wrong path
   or meter id) pause that stream (alert) and probe. Only a message refused (another 4xx)
   max_attempts_rejected times is parked as a dead letter, and the stream moves on.
5. Calls go through one RateBudget: never more than rate_limit_per_day in any 24 h across all
   meters; X-Rate-Limit narrows it; a 429 stops every stream until its Retry-After. The
   budget is kept in the store after each call and restored at start (budget_store).
6. A key is never logged, put into health, an alert or a dead letter.
7. On cancellation, waiting streams stop at once; a request in flight, and the commit of a
   message EnerKey took, may finish within shutdown_grace_secs (else the next start finds it
   in flight: invariant 3).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Final, Unpack

import aiohttp
import yarl

from core.config_base import UplinkConfig
from core.health import Health
from gateway.net.policy import Outcome, Verdict, is_misdirected, rate_limit_remaining
from gateway.store.async_store import AsyncStore
from gateway.timefmt import HOUR_MS, utc_iso8601
from gateway.uplinks.delivery import Attempt, DeliveryOptions, Refused, StreamProgress, StreamUplink
from gateway.uplinks.enerkey import budget_store, inflight
from gateway.uplinks.enerkey import config as ekc
from gateway.uplinks.enerkey import delivered as hours_table
from gateway.uplinks.enerkey.hourly import Event, Gap, HourlyReadings, HourReading
from gateway.uplinks.enerkey.keys import ApiKey, KeyRing
from gateway.uplinks.enerkey.messages import (
    build_body,
    check_answer,
    hour_value,
    push_url,
    state_key,
)
from gateway.uplinks.enerkey.rate_budget import RateBudget
from gateway.uplinks.enerkey.requeue import send_requeued
from gateway.uplinks.registry import UplinkContext

log = logging.getLogger(__name__)

#: Samples read from the store per query (catch-up reads many; each is cheap).
READ_BATCH: Final = 2000
#: A caught-up stream re-reads the store at least this often even without an append signal.
IDLE_RECHECK_SECS: Final = 30.0
DAY_MS: Final = 86_400_000


# -- streams and messages -----------------------------------------------------------------------


@dataclass
class _Message:
    """Hours taken for one request, and the stream state once it is delivered."""

    #: (hour boundary ms, value): the boundary is the reading's instant (consumption: the
    #: END of the hour), which keys delivered_hours whatever the timestamp style.
    items: list[tuple[int, float]] = field(default_factory=list)
    cursor: int | None = None
    next_hour_ms: int | None = None
    last_hour_ms: int | None = None
    last_value: float | None = None
    gaps: list[Gap] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.cursor is None


@dataclass(kw_only=True)
class _Stream(StreamProgress):
    target: ekc.EnerKeyMeterConfig
    url: yarl.URL
    readings: HourlyReadings
    read_after: int = 0
    overflow: deque[Event] = field(default_factory=deque)
    #: The last hourly reading decided (consumption needs the previous hour's reading).
    last_hour_ms: int | None = None
    last_value: float | None = None
    misdirected_since: str | None = None
    hours_missing: int = 0
    #: The key the next request goes with (chosen by _before_attempt).
    key: ApiKey | None = None

    @property
    def kind(self) -> str:
        return self.target.mode


class EnerKeyUplink(StreamUplink[ekc.EnerKeyConfig, _Stream]):
    """Delivers configured meters' hourly readings to EnerKey; see the module invariants."""

    def __init__(
        self,
        config: ekc.EnerKeyConfig,
        *,
        store: AsyncStore,
        health: Health,
        timezone: str = "UTC",
        name: str = "enerkey",
        keys: KeyRing | None = None,
        **options: Unpack[DeliveryOptions],
    ) -> None:
        super().__init__(
            config, name=name, store=store, health=health, timezone=timezone, **options
        )
        self._tz = self._site_tz
        # Secrets: only ever put into the Authorization header of a request.
        self._keys = keys or KeyRing(config.api_keys)
        self._key_label: str | None = None
        # The rate budget keeps the plain clock: flush() never spends calls faster.
        self._budget = RateBudget(
            config.rate_limit_per_day, config.rate_limit_burst, self._clock.clock
        )
        self._max_gap_ms = round(config.max_interpolation_gap_secs * 1000)
        self._span_ms = config.max_days_per_message * DAY_MS
        self._keep_ms = config.keep_delivered_days * DAY_MS
        self._streams = {str(t.meter_id): meter for meter, t in config.meters.items()}
        self._outside_dates_warned: set[str] = set()
        #: Messages whose outcome is unknown, held for a human (inflight, invariant 3).
        self.unknown_outcomes = 0

    def streams(self) -> dict[str, str]:
        return dict(self._streams)

    @property
    def budget(self) -> RateBudget:
        return self._budget

    # -- the delivery core's hooks ------------------------------------------------------------

    def _describe_target(self) -> str:
        base = yarl.URL(self.config.base_url).with_user(None).with_query(None)
        return f"{len(self._streams)} meter(s) to {base}"

    async def run(self) -> None:
        """Restore the daily budget an earlier run left (invariant 5), then deliver."""
        saved = await self._astore.run(budget_store.load, self.name)
        if saved is not None:
            self._budget.restore(saved)
        await super().run()

    def _new_streams(self) -> dict[str, _Stream]:
        return {stream: self._new_stream(stream, meter) for stream, meter in self._streams.items()}

    def _new_stream(self, stream: str, meter: str) -> _Stream:
        target = self.config.meters[meter]
        return _Stream(
            stream,
            meter,
            target=target,
            url=push_url(self.config, target),
            readings=HourlyReadings(target.channel, self._max_gap_ms),
        )

    async def _run_stream(self, st: _Stream) -> None:
        position = await self._astore.register_stream(self.name, st.stream, st.meter)
        saved = await self._astore.state(self.name, state_key(st.stream))
        state = json.loads(saved) if saved else {}
        flight = await self._astore.run(inflight.pending, self.name, st.stream)
        if flight is not None:
            why = "the gateway stopped while this message was in flight (a power cut?)"
            position = await self._hold(st, flight, why)
            state = json.loads(flight.state.get(state_key(st.stream), "{}"))
        st.readings = HourlyReadings(st.target.channel, self._max_gap_ms, state.get("next_hour_ms"))
        st.last_hour_ms = state.get("last_hour_ms")
        st.last_value = state.get("last_value")
        st.read_after = position
        st.overflow.clear()
        while not self._stopping:
            await self._send_requeued(st)
            message = await self._collect(st)
            if message.empty:
                await self._wait_for_samples(st)
                continue
            if message.items:
                await self._drop_delivered(st, message)
            if not message.items:
                await self._commit(st, message, delivered=False)
                continue
            try:
                if await self._send(st, message):
                    await self._commit(st, message, delivered=True)
            finally:
                st.in_request = False

    # -- deciding hours -------------------------------------------------------------------------

    async def _collect(self, st: _Stream) -> _Message:
        """Decided hours for the next message: the overflow of the last one, then new samples,
        until the message spans max_days_per_message or the store has nothing more.
        """
        message = _Message()
        while st.overflow:
            if not self._take(st, st.overflow[0], message):
                return message
            st.overflow.popleft()
        events: list[Event] = []
        while True:
            batch, read_to = await self._astore.read_new(st.meter, st.read_after, READ_BATCH)
            if not batch:
                st.read_after = read_to
                return message
            for stored in batch:
                st.readings.feed(stored, events)
                st.read_after = stored.rowid
                if events:
                    for index, event in enumerate(events):
                        if not self._take(st, event, message):
                            st.overflow.extend(events[index:])
                            return message
                    events.clear()

    def _take(self, st: _Stream, event: Event, message: _Message) -> bool:
        """Add one decided boundary to `message`; False (nothing changed) when it is full."""
        if isinstance(event, Gap):
            message.gaps.append(event)
            self._report_gap(st, event)
        else:
            if message.items and event.hour_ms - message.items[0][0] >= self._span_ms:
                return False
            value = self._value(st, event)
            if value is not None:
                message.items.append((event.hour_ms, value))
            st.last_hour_ms, st.last_value = event.hour_ms, event.value
        message.cursor = event.cursor
        message.next_hour_ms = event.last_hour_ms + HOUR_MS
        message.last_hour_ms, message.last_value = st.last_hour_ms, st.last_value
        return True

    def _value(self, st: _Stream, reading: HourReading) -> float | None:
        """What is sent for this boundary, or None (consumption without the hour before)."""
        decided = hour_value(st.target, reading, st.last_hour_ms, st.last_value)
        if decided.left_out is not None:
            self._left_out(st, decided.left_out)
        elif decided.alert is not None:
            self._health.alert(self.name, f"meter {st.meter}: {decided.alert}")
        return decided.value

    def _left_out(self, st: _Stream, why: str) -> None:
        """An hour whose consumption cannot be told: alerted, counted, not sent."""
        self._health.alert(
            self.name, f"meter {st.meter}: {why}; that hour's consumption is left out"
        )
        st.hours_missing += 1
        self._uplink_health.facts.setdefault("hours_missing", {})[st.meter] = st.hours_missing

    def _report_gap(self, st: _Stream, gap: Gap) -> None:
        st.hours_missing += gap.hours
        self._uplink_health.facts.setdefault("hours_missing", {})[st.meter] = st.hours_missing
        text = gap.describe(st.meter, self.config.max_interpolation_gap_secs)
        self._uplink_health.facts["last_gap"] = text
        self._health.alert(self.name, text)

    async def _wait_for_samples(self, st: _Stream) -> None:
        """Caught up: wait for an append (or a while), armed before re-checking the store."""
        if not self._astore.has_after(st.meter, st.read_after):
            # Only this meter's appends wake it; armed right after the check (no await between).
            await self._clock.race(self._astore.wait_appended(IDLE_RECHECK_SECS, meter=st.meter))

    async def _drop_delivered(self, st: _Stream, message: _Message) -> None:
        """The duplicate guard: hours already recorded as delivered are not sent (summed)."""
        first, last = message.items[0][0], message.items[-1][0]
        done = await self._astore.run(
            hours_table.delivered_hours, self.name, st.stream, st.kind, start_ms=first, end_ms=last
        )
        if not done:
            return
        hours = {hour for hour, _ in done}
        message.items = [item for item in message.items if item[0] not in hours]
        self._health.alert(
            self.name,
            f"meter {st.meter}: {len(hours)} {st.kind} hour(s) from "
            f"{utc_iso8601(min(hours))} were already delivered; not sent again",
        )

    # -- committing -----------------------------------------------------------------------------

    def _state(self, st: _Stream, message: _Message) -> dict[str, str]:
        """The stream's uplink_state row once `message` is delivered (JSON)."""
        saved = {
            "next_hour_ms": message.next_hour_ms,
            "last_hour_ms": message.last_hour_ms,
            "last_value": message.last_value,
        }
        return {state_key(st.stream): json.dumps(saved)}

    async def _commit(self, st: _Stream, message: _Message, *, delivered: bool) -> None:
        assert message.cursor is not None
        await self._astore.run(
            hours_table.record_delivery,
            self.name,
            st.stream,
            message.cursor,
            kind=st.kind,
            hours=message.items if delivered else [],
            now_ms=int(self._clock.time() * 1000),
            state=self._state(st, message),
            keep_ms=self._keep_ms,
        )
        if delivered and message.items:
            health = self._uplink_health
            health.delivered += len(message.items)
            health.last_success_ms = int(self._clock.time() * 1000)
            health.facts.setdefault("last_hour", {})[st.meter] = utc_iso8601(message.items[-1][0])

    # -- sending --------------------------------------------------------------------------------

    async def _send(self, st: _Stream, message: _Message) -> bool:
        """Send one message until EnerKey takes it (True), or park it (False): refused for
        good, or its outcome unknown (invariant 3).

        On True the stream stays `in_request` until `_run_stream` has committed the hours
        (the shutdown grace covers the commit of a message EnerKey took).
        """
        body = build_body(
            self.config,
            st.target.meter_id,
            [(self._stamp(st, hour), value) for hour, value in message.items],
            self._tz,
        )
        assert message.cursor is not None
        flight = inflight.InFlight(
            message.cursor,
            len(message.items),
            message.items[0][0],
            message.items[-1][0],
            body.decode(),
            self._state(st, message),
            self._now_ms(),
        )
        try:
            await self._settle(st, lambda: self._attempt(st, body, flight))
        except Refused as refused:
            await self._park_message(st, message, body=body, refused=refused)
            await self._astore.run(inflight.clear, self.name, st.stream)
            return False
        except inflight.OutcomeUnknown as unknown:
            await self._hold(st, flight, f"no answer that says ({unknown.verdict.detail})")
            return False
        return True

    async def _attempt(self, st: _Stream, body: bytes, flight: inflight.InFlight | None) -> Attempt:
        """One request, recorded in flight first (a re-queued one is held by its letter); a
        lost answer ends the retries."""
        if flight is not None:
            await self._astore.run(inflight.record, self.name, st.stream, flight)
        attempt = await self._post_with_key(st, body)
        if inflight.outcome_unknown(attempt.verdict):
            raise inflight.OutcomeUnknown(attempt.verdict)
        if attempt.verdict.outcome is not Outcome.OK and flight is not None:
            await self._astore.run(inflight.clear, self.name, st.stream)
        return attempt

    async def _send_requeued(self, st: _Stream) -> None:
        """Messages an operator re-queued go first (gateway.uplinks.enerkey.requeue)."""

        async def settle(body: bytes) -> None:
            try:
                await self._settle(st, lambda: self._attempt(st, body, None))
            finally:
                st.in_request = False

        await send_requeued(
            self._astore,
            name=self.name,
            stream=st.stream,
            meter=st.meter,
            health=self._health,
            settle=settle,
            now_ms=self._now_ms,
        )

    async def _hold(self, st: _Stream, flight: inflight.InFlight, why: str) -> int:
        """An unknown outcome: park the message for a human, alert, count; the new cursor."""
        await self._astore.run(
            inflight.hold, self.name, st.stream, flight, why=why, now_ms=self._now_ms()
        )
        self.unknown_outcomes += 1
        self._uplink_health.facts["unknown_outcomes"] = self.unknown_outcomes
        self._uplink_health.parked += 1
        self._health.alert(
            self.name,
            f"meter {st.meter}: message with {flight.hours} hour(s) "
            f"{utc_iso8601(flight.first_hour_ms)} .. {utc_iso8601(flight.last_hour_ms)}: "
            f"{inflight.UNKNOWN}, {why}; not sent again (EnerKey sums values of one hour). "
            "Check those hours in EnerKey; the message is kept: meter-gateway deadletters "
            "--uplink enerkey",
        )
        return await self._astore.run(lambda store: store.cursor(self.name, st.stream))

    def _stamp(self, st: _Stream, hour_ms: int) -> int:
        if st.kind == "consumption" and self.config.consumption_timestamp == "hour_start":
            return hour_ms - HOUR_MS
        return hour_ms

    async def _post_with_key(self, st: _Stream, body: bytes) -> Attempt:
        key = st.key
        assert key is not None
        headers = {
            "Content-Type": "application/json",
            "Authorization": self.config.authorization_prefix + key.secret.get_secret_value(),
        }

        seen: list[str] = []

        def observe(response: aiohttp.ClientResponse) -> None:
            seen.append(response.content_type)
            remaining = rate_limit_remaining(response.headers)
            if remaining is not None:
                self._budget.observe(key.label, remaining)

        attempt = await self._post(st.url, body, headers, observe=observe)
        self._facts()
        return self._checked(attempt, seen[0] if seen else "")

    def _checked(self, attempt: Attempt, content_type: str) -> Attempt:
        """A 2xx not shaped as EnerKey's answer is counted and made a RETRY (messages)."""
        checked = check_answer(attempt.verdict, content_type, attempt.answer)
        if checked is None:
            return attempt
        facts = self._uplink_health.facts
        facts["unexpected_answers"] = int(facts.get("unexpected_answers", 0)) + 1
        return Attempt(checked)

    # -- the delivery core's hooks ------------------------------------------------------------

    def _resumed(self) -> str:
        return f"key {self._key_label} accepted again; resuming delivery"

    async def _before_attempt(self, st: _Stream) -> None:
        """Wait while paused (the probe tries every key again), choose a key (none left:
        pause every stream), and take a call from the daily rate budget."""
        while True:
            if self._gate.paused:
                prober = self._gate.prober == st.stream
                await self._gate.wait_turn(st.stream, self.config.auth_probe_secs, self._clock)
                if prober and self._gate.paused:
                    self._keys.reset()
            key = self._keys.current()
            if key is not None:
                break
            labels = " and ".join(self._keys.refused_labels()) or "every key"
            self._pause(st, f"API key(s) {labels} refused")
        self._use_key(key)
        st.key = key
        await self._budget.acquire()
        await self._astore.run(
            budget_store.save, self.name, self._budget.snapshot(), window_secs=DAY_MS / 1000
        )

    async def _credentials_refused(self, st: _Stream, attempt: Attempt) -> None:
        """401/403 with this key: the next attempt uses the other key (alerted once per key)."""
        key = st.key
        assert key is not None
        first = self._keys.refuse(key)
        self._uplink_health.facts["keys_refused"] = self._keys.refused_labels()
        if not first or self._gate.paused:
            return  # already reported, or a probe while paused
        other = self._keys.current()
        if other is not None:
            self._health.alert(
                self.name,
                f"API key {key.label} was refused ({attempt.verdict.detail}); switched to key "
                f"{other.label}. Renew key {key.label} in EnerKey and in the config",
            )

    async def _misdirected(self, st: _Stream, attempt: Attempt) -> bool:
        """404/405: the path or the meter id is wrong; a human must fix the config."""
        verdict = attempt.verdict
        if not is_misdirected(verdict):
            return False
        if st.misdirected_since is None:
            st.misdirected_since = verdict.detail
            self._health.alert(
                self.name,
                f"meter {st.meter}: EnerKey answered {verdict.detail} for {st.url.path} "
                f"(meter id {st.target.meter_id}): check the path and meter id in the config; "
                f"data kept, trying again every {self.config.auth_probe_secs:g} s",
            )
        await self._clock.sleep(self.config.auth_probe_secs)
        return True

    async def _wait_to_retry(self, st: _Stream, delay: float, verdict: Verdict) -> None:
        if verdict.status == 429:
            self._budget.block(delay)  # every stream waits, not only this one
        else:
            await super()._wait_to_retry(st, delay, verdict)

    def _succeeded(self, st: _Stream) -> None:
        super()._succeeded(st)
        if st.misdirected_since is not None:
            log.warning("%s/%s: EnerKey accepts this meter's messages again", self.name, st.stream)
            st.misdirected_since = None

    # -- outcomes -------------------------------------------------------------------------------

    def _use_key(self, key: ApiKey) -> None:
        if key.label != self._key_label:
            if self._key_label is not None:
                log.warning("%s: now sending with key %s", self.name, key.label)
            self._key_label = key.label
        if key.label in self._keys.outside_dates() and key.label not in self._outside_dates_warned:
            self._outside_dates_warned.add(key.label)
            log.warning(
                "%s: no key is inside its configured validity dates; trying key %s anyway",
                self.name,
                key.label,
            )

    async def _park_message(
        self, st: _Stream, message: _Message, *, body: bytes, refused: Refused
    ) -> None:
        assert message.cursor is not None
        first, last = message.items[0][0], message.items[-1][0]
        await self._park(
            st,
            message.cursor,
            payload=body,
            refused=refused,
            what=(
                f"meter {st.meter}: message with {len(message.items)} hour(s) "
                f"{utc_iso8601(first)} .. {utc_iso8601(last)}"
            ),
            state=self._state(st, message),
        )

    def _facts(self) -> None:
        self._uplink_health.facts.update(key=self._key_label, **self._budget.facts(self._key_label))


def build_uplink(section: UplinkConfig, context: UplinkContext) -> EnerKeyUplink:
    """Registered for `uplinks.enerkey` (gateway.uplinks.enerkey.config)."""
    assert isinstance(section, ekc.EnerKeyConfig)
    return EnerKeyUplink(
        section,
        store=context.store,
        health=context.health,
        timezone=context.config.gateway.timezone,
    )
