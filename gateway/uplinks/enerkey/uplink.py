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
3. Duplicate window (matters for consumption, which EnerKey SUMS per hour): a message is sent
   again only if (a) the process dies between EnerKey's 2xx and that commit (milliseconds), or
   (b) a request's answer is lost (timeout, dropped connection) after EnerKey processed it:
   that message is retried. Both are counted in health (`ambiguous_retries`). Before sending a
   consumption message, hours already recorded as delivered are dropped (an alert says so).
   Cumulative readings are idempotent, hence the default.
4. Nothing is dropped for a transient failure or refused keys: 5xx/timeouts retry the SAME
   message with jittered backoff; 401/403 switch to the other key at once (alert naming the key
   by its label A/B); both refused pause every stream (alert) and probe every auth_probe_secs;
   404/405 (wrong path or meter id) pause that stream (alert) and probe. Only a message refused
   (another 4xx) max_attempts_rejected times is parked as a dead letter, and the stream moves on.
5. Calls go through one RateBudget: never more than rate_limit_per_day in any 24 h across all
   meters; X-Rate-Limit narrows it; a 429 stops every stream until its Retry-After.
6. A key is never logged, put into health, an alert or a dead letter.
7. On cancellation, waiting streams stop at once; a request in flight, and the commit of a
   message EnerKey took, may finish within shutdown_grace_secs (else the message is sent again
   next start: window (a) of invariant 3).
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
from gateway.net.policy import Verdict, is_misdirected, rate_limit_remaining
from gateway.store.async_store import AsyncStore
from gateway.timefmt import HOUR_MS, utc_iso8601
from gateway.uplinks.delivery import Attempt, DeliveryOptions, Refused, StreamProgress, StreamUplink
from gateway.uplinks.enerkey import config as ekc
from gateway.uplinks.enerkey import delivered as hours_table
from gateway.uplinks.enerkey.hourly import Event, Gap, HourlyReadings, HourReading
from gateway.uplinks.enerkey.keys import ApiKey, KeyRing
from gateway.uplinks.enerkey.messages import build_body, convert, push_url, state_key
from gateway.uplinks.enerkey.rate_budget import RateBudget
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
    #: Hours in the message being sent (for the log line of an ambiguous retry).
    sending_hours: int = 0

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
        #: Requests whose answer was lost after they may have been processed, then retried.
        self.ambiguous_retries = 0

    def streams(self) -> dict[str, str]:
        return dict(self._streams)

    @property
    def budget(self) -> RateBudget:
        return self._budget

    # -- the delivery core's hooks ------------------------------------------------------------

    def _describe_target(self) -> str:
        base = yarl.URL(self.config.base_url).with_user(None).with_query(None)
        return f"{len(self._streams)} meter(s) to {base}"

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
        st.readings = HourlyReadings(st.target.channel, self._max_gap_ms, state.get("next_hour_ms"))
        st.last_hour_ms = state.get("last_hour_ms")
        st.last_value = state.get("last_value")
        st.read_after = position
        st.overflow.clear()
        while not self._stopping:
            message = await self._collect(st)
            if message.empty:
                await self._wait_for_samples(st)
                continue
            if message.items and st.kind == "consumption":
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
        target = st.target
        value = convert(reading.value, target)
        previous = None
        if st.last_value is not None and st.last_hour_ms is not None:
            previous = convert(st.last_value, target)
        if target.mode == "cumulative":
            if reading.series_break is not None:
                before = "none" if previous is None else f"{previous:g}"
                self._health.alert(
                    self.name,
                    f"meter {st.meter}: {reading.series_break} in the hour ending "
                    f"{utc_iso8601(reading.hour_ms)} ({before} -> {value:g} {target.unit}): a "
                    "new counter series starts; sent as read (record the meter change in "
                    "EnerKey)",
                )
                return value
            if previous is not None and value < previous:
                self._health.alert(
                    self.name,
                    f"meter {st.meter}: counter went down at {utc_iso8601(reading.hour_ms)} "
                    f"({previous:g} -> {value:g} {target.unit}); sent as read",
                )
            return value
        if previous is None or st.last_hour_ms != reading.hour_ms - HOUR_MS:
            return None  # the hour before was a gap (reported) or this is the first reading
        change = f"({previous:g} -> {value:g} {target.unit}"
        if reading.series_break is not None:
            why = f"{reading.series_break} in the hour ending {utc_iso8601(reading.hour_ms)}"
            self._left_out(st, f"{why} {change}, flagged by the gateway)")
            return None
        consumption = round(value - previous, target.decimals)
        if consumption < 0:
            why = f"counter went down in the hour ending {utc_iso8601(reading.hour_ms)}"
            self._left_out(st, f"{why} {change})")
            return None
        return consumption

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
        before = "the first sample" if gap.before_ms is None else utc_iso8601(gap.before_ms)
        why = (
            f"samples {before} and {utc_iso8601(gap.after_ms)} are more than "
            f"{self.config.max_interpolation_gap_secs:g} s apart"
            if gap.reason == "no samples"
            else f"the counter went down between {before} and {utc_iso8601(gap.after_ms)}"
            if gap.reason == "counter decreased"
            else f"a {gap.reason} flagged at {utc_iso8601(gap.after_ms)}: no interpolation "
            "across two counter series"
        )
        text = (
            f"meter {st.meter}: no reading for {gap.hours} hour(s) "
            f"{utc_iso8601(gap.first_hour_ms)} .. {utc_iso8601(gap.last_hour_ms)} ({why}); "
            "left out, not invented"
        )
        self._uplink_health.facts["last_gap"] = text
        self._health.alert(self.name, text)

    async def _wait_for_samples(self, st: _Stream) -> None:
        """Caught up: wait for an append (or a while), armed before re-checking the store."""
        if not self._astore.has_after(st.meter, st.read_after):
            # Only this meter's appends wake it; armed right after the check (no await between).
            await self._clock.race(self._astore.wait_appended(IDLE_RECHECK_SECS, meter=st.meter))

    async def _drop_delivered(self, st: _Stream, message: _Message) -> None:
        """The duplicate guard: consumption hours already recorded as delivered are not sent."""
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
            f"meter {st.meter}: {len(hours)} consumption hour(s) from "
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
        """Send one message until EnerKey takes it (True) or it is parked (False).

        On True the stream stays `in_request` until `_run_stream` has committed the hours
        (the shutdown grace covers the commit of a message EnerKey took).
        """
        body = build_body(
            self.config,
            st.target.meter_id,
            [(self._stamp(st, hour), value) for hour, value in message.items],
            self._tz,
        )
        st.sending_hours = len(message.items)
        try:
            await self._settle(st, lambda: self._post_with_key(st, body))
        except Refused as refused:
            await self._park_message(st, message, body=body, refused=refused)
            return False
        return True

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

        def observe(response: aiohttp.ClientResponse) -> None:
            remaining = rate_limit_remaining(response.headers)
            if remaining is not None:
                self._budget.observe(key.label, remaining)

        attempt = await self._post(st.url, body, headers, observe=observe)
        self._facts()
        return attempt

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

    def _ambiguous(self, st: _Stream, attempt: Attempt) -> None:
        self.ambiguous_retries += 1
        self._uplink_health.facts["ambiguous_retries"] = self.ambiguous_retries
        log.warning(
            "%s/%s: no answer to a message of %d hour(s) (%s): EnerKey may have "
            "taken it; sending it again%s",
            self.name,
            st.stream,
            st.sending_hours,
            attempt.verdict.detail,
            " (consumption: may double-count)" if st.kind == "consumption" else "",
        )

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
        facts = self._uplink_health.facts
        budget = self._budget
        facts["key"] = self._key_label
        if self._key_label in budget.remaining:
            facts["calls_left"] = budget.remaining[self._key_label]
        facts["calls_left_by_key"] = dict(budget.remaining)
        facts["calls_24h"] = budget.calls_in_window()


def build_uplink(section: UplinkConfig, context: UplinkContext) -> EnerKeyUplink:
    """Registered for `uplinks.enerkey` (gateway.uplinks.enerkey.config)."""
    assert isinstance(section, ekc.EnerKeyConfig)
    return EnerKeyUplink(
        section,
        store=context.store,
        health=context.health,
        timezone=context.config.gateway.timezone,
    )
