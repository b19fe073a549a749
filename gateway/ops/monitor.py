"""The operations plane: gateway health published over MQTT, never in the way of the data path.

Invariants:
- `Monitor.publish()` is synchronous and never blocks or awaits the broker. It puts the message in
  one bounded buffer keyed by topic, so a topic waiting to be sent holds only its latest payload
  (telemetry coalesces while the broker is away); beyond `queue_size` topics the oldest is dropped
  and counted in `dropped`.
- Command answers go through a second, FIFO lane that is never coalesced (bounded too) and is
  sent before telemetry; Home Assistant discovery is published directly by the session on every
  connect, so neither can be coalesced away by telemetry.
- `<prefix>/<gateway id>/status` is `online` (retained) while connected. The broker publishes the
  last will `offline` (retained) if the connection dies; a clean shutdown publishes `offline` itself
  before disconnecting.
- Health state topics are re-rendered from `Health` right after every (re)connect and then every
  `publish_interval_secs`, always retained, so a subscriber that arrives late sees current state.
- The only subscription is `<prefix>/<gateway id>/cmd/#` (when commands are wired), renewed on
  every connect: no wildcard beyond the gateway's own command topics (fleet scale).
- Each connection attempt uses a fresh aiomqtt client: an attempt abandoned half-way (cancelled,
  timed out) can leave a client unusable, and a client is cheap.
- The broker going away is logged once, its return once; attempts in between only count.
- Attempts are spaced by a core.backoff.Backoff (reconnect_min_secs doubling to
  reconnect_max_secs, each delay jittered within its upper half), reset once a connection got
  as far as `online`.

`HealthRenderer` renders Health into (topic suffix, payload) pairs on its own;
`gateway.ops.discovery` renders Home Assistant discovery and `gateway.ops.commands` answers
commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiomqtt

from core.backoff import Backoff, equal_jitter
from core.channels import CHANNEL_UNITS
from core.health import (
    BusHealth,
    Health,
    MeterHealth,
    UplinkHealth,
    kernel_clock_synchronized,
)
from core.sample import Sample, StoredSample
from gateway.config.schema import Config, MqttConfig, MqttTlsConfig
from gateway.ops.commands import CommandHandler
from gateway.ops.discovery import (
    DiscoveryLedger,
    Inventory,
    StoreLedger,
    describe_meters,
    discovery_messages,
)
from gateway.poller import Poller
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from gateway.uplinks.base import Uplink

log = logging.getLogger(__name__)

ONLINE = "online"
OFFLINE = "offline"
#: How long a cancelled monitor spends saying `offline` and disconnecting, at most (each step).
SHUTDOWN_STEP_S = 0.5
#: Commands running at once; one more is answered `busy` at once.
MAX_COMMANDS_IN_FLIGHT = 8
#: Command answers waiting for the broker beyond this many: the oldest is dropped (counted).
MAX_PENDING_RESULTS = 100
#: Rates (samples per minute, bus utilisation) are averaged over at least this window.
RATE_WINDOW_S = 60.0

Payload = Mapping[str, Any] | str


@dataclass(frozen=True, slots=True)
class _Outgoing:
    payload: str | bytes
    qos: int
    retain: bool


def _iso(ts_ms: int | None) -> str | None:
    if ts_ms is None:
        return None
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _finite(value: float | None) -> float | None:
    """JSON has no NaN/Infinity; a subscriber's strict parser would reject the whole payload."""
    return value if value is not None and math.isfinite(value) else None


def meter_state(meter: MeterHealth) -> dict[str, Any]:
    """`meters/<id>/state`: values in canonical units (Wh for energy), listed in `units`."""
    return {
        "state": str(meter.state),
        "reads": meter.reads,
        "errors": dict(meter.errors),
        "errors_total": sum(meter.errors.values()),
        "consecutive_errors": meter.consecutive_errors,
        "skipped_ticks": meter.skipped_ticks,
        "refused_older": meter.refused_older,
        "last_error": meter.last_error,
        "last_read_ts": _iso(meter.last_read_ts_ms),
        "last_latency_s": _finite(meter.last_latency_s),
        "next_attempt_ts": _iso(getattr(meter, "next_attempt_ts_ms", None)),
        "values": {name: _finite(value) for name, value in meter.last_values.items()},
        "units": {name: CHANNEL_UNITS[name] for name in meter.last_values if name in CHANNEL_UNITS},
        "counter_resets": meter.counter_resets,
        "counter_jumps": meter.counter_jumps,
        "last_counter_problem": meter.last_counter_problem,
        "refused_clock_step": meter.refused_clock_step,
        "facts": dict(meter.facts),
    }


def uplink_state(uplink: UplinkHealth, *, now_ms: int | None = None) -> dict[str, Any]:
    """`uplinks/<name>/state`; backlog figures are None until the daemon first measured them."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    oldest = uplink.oldest_undelivered_ts_ms
    return {
        "delivered": uplink.delivered,
        "retries": uplink.retries,
        "parked": uplink.parked,
        "last_success": _iso(uplink.last_success_ms),
        "last_error": uplink.last_error,
        "last_error_ts": _iso(uplink.last_error_ms),
        "paused_reason": uplink.paused_reason,
        "backlog_rows": uplink.backlog_rows,
        "oldest_undelivered": _iso(oldest),
        "oldest_undelivered_age_s": None if oldest is None else max(0, (now - oldest) // 1000),
        "dead_letters": uplink.dead_letters,
        "facts": dict(uplink.facts),
    }


def bus_state(bus: BusHealth, *, utilisation: float | None, now_monotonic: float) -> dict[str, Any]:
    """`buses/<id>/state`; `utilisation` is the busy share over the last minute or so."""
    return {
        "state": str(bus.state),
        "transactions": bus.transactions,
        "errors": dict(bus.errors),
        "errors_total": sum(bus.errors.values()),
        "reconnects": bus.reconnects,
        "last_error": bus.last_error,
        "busy_s": round(bus.busy_s, 3),
        "utilisation": None if utilisation is None else round(utilisation, 4),
        "utilisation_since_start": round(bus.utilisation(now_monotonic), 4),
    }


class _Rate:
    """Growth per second of a counter over a sliding window of at least `window_s`."""

    def __init__(self, window_s: float, start: tuple[float, float]) -> None:
        self.window_s = window_s
        self._points: deque[tuple[float, float]] = deque([start])

    def update(self, now: float, value: float) -> float | None:
        self._points.append((now, value))
        while len(self._points) > 2 and now - self._points[1][0] >= self.window_s:
            self._points.popleft()
        then, before = self._points[0]
        return (value - before) / (now - then) if now > then else None


class HealthRenderer:
    """Health as retained state topics: `state`, `meters/<id>/state`, `buses/<id>/state`,
    `uplinks/<name>/state`. Keeps the little history rates need; one per monitor."""

    def __init__(self, version: str, *, rate_window_s: float = RATE_WINDOW_S) -> None:
        self.version = version
        self.rate_window_s = rate_window_s
        self._reads: _Rate | None = None
        self._busy: dict[str, _Rate] = {}

    def render(
        self,
        health: Health,
        *,
        now_monotonic: float | None = None,
        now_ms: int | None = None,
        extra_state: Mapping[str, Any] | None = None,
    ) -> list[tuple[str, dict[str, Any]]]:
        now = time.monotonic() if now_monotonic is None else now_monotonic
        wall_ms = int(time.time() * 1000) if now_ms is None else now_ms
        uptime = max(0.0, now - health.started_monotonic)
        if self._reads is None:
            self._reads = _Rate(self.rate_window_s, (health.started_monotonic, 0))
        per_s = self._reads.update(now, sum(m.reads for m in health.meters.values()))
        last_alert = health.alerts[-1] if health.alerts else None
        budget = health.store_budget_bytes
        used = health.store_bytes
        states = [str(m.state) for m in health.meters.values()]
        state: dict[str, Any] = {
            "version": self.version,
            "started": _iso(wall_ms - round(uptime * 1000)),
            "uptime_s": round(uptime),
            "store_bytes": used,
            "store_budget_bytes": budget,
            "store_used_pct": None if used is None or not budget else round(100 * used / budget, 2),
            "store_full": health.store_full,
            "clock_trusted": health.clock_trusted,
            "clock_synchronized": health.clock_synchronized,
            "clock": dataclasses.asdict(health.clock),
            "samples_per_min": None if per_s is None else round(60 * per_s, 2),
            "meters": {name: states.count(name) for name in ("ok", "degraded", "offline")},
            "alerts": len(health.alerts),
            "last_alert": None
            if last_alert is None
            else {
                "ts": _iso(last_alert.ts_ms),
                "source": last_alert.source,
                "message": last_alert.message,
            },
            **(extra_state or {}),
        }
        messages: list[tuple[str, dict[str, Any]]] = [("state", state)]
        messages += [(f"meters/{m.meter}/state", meter_state(m)) for m in health.meters.values()]
        for bus in health.buses.values():
            rate = self._busy.get(bus.bus)
            if rate is None:
                rate = self._busy[bus.bus] = _Rate(self.rate_window_s, (bus.since_monotonic, 0.0))
            busy = rate.update(now, bus.busy_s)
            utilisation = None if busy is None else min(1.0, max(0.0, busy))
            messages.append(
                (
                    f"buses/{bus.bus}/state",
                    bus_state(bus, utilisation=utilisation, now_monotonic=now),
                )
            )
        messages += [
            (f"uplinks/{u.uplink}/state", uplink_state(u, now_ms=wall_ms))
            for u in health.uplinks.values()
        ]
        return messages


def health_messages(
    health: Health, *, version: str, now_monotonic: float | None = None, now_ms: int | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """One rendering without history (rates are averages since start)."""
    return HealthRenderer(version).render(health, now_monotonic=now_monotonic, now_ms=now_ms)


def sample_message(sample: Sample) -> dict[str, Any]:
    """`meters/<id>/values`: one sample as stored, canonical units."""
    return {
        "ts": _iso(sample.ts_ms),
        "ts_ms": sample.ts_ms,
        "values": {name: _finite(value) for name, value in sample.values.items()},
    }


def tls_context(tls: MqttTlsConfig) -> ssl.SSLContext:
    """Verifying TLS context (chain and host name, never switched off): the CA file or the
    system's CAs, and the client certificate when one is configured."""
    context = ssl.create_default_context(cafile=None if tls.ca_file is None else str(tls.ca_file))
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


class Monitor:
    """Publishes gateway status and health to an MQTT broker until cancelled; with an inventory
    also Home Assistant discovery, with a command handler answers `cmd/` topics."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        gateway_id: str,
        health: Health,
        version: str,
        publish_interval_secs: float | None = None,
        reconnect_min_secs: float = 0.5,
        reconnect_max_secs: float | None = None,
        inventory: Inventory | None = None,
        commands: CommandHandler | None = None,
        ledger: DiscoveryLedger | None = None,
    ) -> None:
        self.config = config
        self.health = health
        self.version = version
        self.publish_interval_secs = (
            config.publish_interval_secs if publish_interval_secs is None else publish_interval_secs
        )
        self.reconnect_min_secs = reconnect_min_secs
        self.reconnect_max_secs = (
            config.reconnect_max_secs if reconnect_max_secs is None else reconnect_max_secs
        )
        self.client_id = config.client_id or f"meter-gateway-{gateway_id}"
        self.base_topic = f"{config.topic_prefix.strip('/')}/{gateway_id}"
        self.status_topic = f"{self.base_topic}/status"
        self.command_topic = f"{self.base_topic}/cmd"
        self.commands = commands
        self.ledger = ledger
        #: Discovery topic -> payload, published retained on every connect.
        self.discovery: dict[str, str] = {}
        if config.homeassistant_discovery:
            rendered = discovery_messages(
                inventory or Inventory(gateway_id),
                base_topic=self.base_topic,
                discovery_prefix=config.discovery_prefix,
                version=version,
            )
            self.discovery = {topic: _encode(payload) for topic, payload in rendered.items()}
        #: Messages refused because a buffer was full (the oldest goes first).
        self.dropped = 0
        #: Messages replaced by a newer payload for the same topic before they were sent.
        self.coalesced = 0
        self._pending: OrderedDict[str, _Outgoing] = OrderedDict()
        self._results: deque[tuple[str, _Outgoing]] = deque()
        self._commands_running: set[asyncio.Task[None]] = set()
        self._renderer = HealthRenderer(version)
        self._discovery_settled = False
        #: Alerts already queued for the `alerts` topic (Health.alerts_total at the time).
        self._alerts_published = 0
        self._wake = asyncio.Event()
        self._connected = False
        self._broker_seen: bool | None = None  # None until the first attempt ends either way
        self._failed_attempts = 0
        self._dropped_at_loss = 0

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def pending(self) -> int:
        """Telemetry messages waiting for the broker (never more than `queue_size`)."""
        return len(self._pending)

    def publish(
        self, topic_suffix: str, payload: Payload, *, retain: bool = False, qos: int = 0
    ) -> None:
        """Queue `payload` for `<prefix>/<gateway id>/<topic_suffix>`; returns at once, never fails
        for want of a broker. Call it from the event loop's thread."""
        if not topic_suffix or topic_suffix.startswith("/") or any(c in topic_suffix for c in "+#"):
            raise ValueError(f"invalid topic suffix {topic_suffix!r}")
        if qos not in (0, 1, 2):
            raise ValueError(f"invalid qos {qos!r}")
        topic = f"{self.base_topic}/{topic_suffix}"
        if topic in self._pending:
            self.coalesced += 1
            del self._pending[topic]
        self._pending[topic] = _Outgoing(_encode(payload), qos, retain)
        while len(self._pending) > self.config.queue_size:
            self._pending.popitem(last=False)
            self.dropped += 1
        self._wake.set()

    def publish_health(self) -> None:
        """Queue the current health state now (also done on every connect and interval)."""
        extra = {"mqtt": {"dropped": self.dropped, "coalesced": self.coalesced}}
        for suffix, payload in self._renderer.render(self.health, extra_state=extra):
            self.publish(suffix, payload, retain=True, qos=1)
        self._publish_new_alerts()

    def _publish_new_alerts(self) -> None:
        """Every alert raised since the last call, one message each on `alerts` (QoS 1, not
        retained, never coalesced): `state` shows only the last one, and several often come
        within one publish interval."""
        new = self.health.alerts_total - self._alerts_published
        self._alerts_published = self.health.alerts_total
        recent = list(self.health.alerts)[-new:] if new > 0 else []
        for alert in recent:
            payload = {"ts": _iso(alert.ts_ms), "source": alert.source, "message": alert.message}
            self._queue_fifo(f"{self.base_topic}/alerts", payload)

    def publish_sample(self, sample: Sample) -> None:
        """Queue one sample for `meters/<id>/values` (not retained; coalesced while the broker
        is away like all telemetry). Synchronous: safe to call from the data path."""
        self.publish(
            f"meters/{sample.meter}/values", sample_message(sample), qos=self.config.values_qos
        )

    async def run(self) -> None:
        """Connect, publish, reconnect with a Backoff(reconnect_min_secs, reconnect_max_secs)
        that a connection which got as far as `online` resets; returns only by cancellation."""
        backoff = Backoff(self.reconnect_min_secs, self.reconnect_max_secs, rng=equal_jitter)
        try:
            while True:
                try:
                    client = self._client()
                    await self._session(client)
                except aiomqtt.MqttError as exc:
                    _raise_if_cancelling(exc)
                    if self._connected:
                        backoff.reset()
                    self._connected = False
                    self._note_failure(exc)
                await asyncio.sleep(backoff.next_delay())
        finally:
            await self._stop_commands()

    def _client(self) -> aiomqtt.Client:
        password = self.config.password
        context = None
        if self.config.tls is not None:
            try:
                context = tls_context(self.config.tls)
            except (OSError, ssl.SSLError) as exc:  # a missing or bad file: retried like a broker
                raise aiomqtt.MqttError(f"TLS set-up failed: {exc}") from exc
        return aiomqtt.Client(
            self.config.host,
            self.config.port,
            identifier=self.client_id,
            username=self.config.username,
            password=None if password is None else password.get_secret_value(),
            keepalive=self.config.keepalive_secs,
            timeout=self.config.timeout_secs,
            will=aiomqtt.Will(self.status_topic, OFFLINE, qos=1, retain=True),
            tls_context=context,
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection, from CONNACK until it breaks (MqttError) or we are cancelled."""
        await self._enter(client)
        try:
            if self.commands is not None:
                # Before `online`: an operator who waits for `online` is heard.
                await client.subscribe(f"{self.command_topic}/#", qos=1)
                _raise_if_cancelling()
            await client.publish(self.status_topic, ONLINE, qos=1, retain=True)
            _raise_if_cancelling()
            self._connected = True
            self._note_connected()
            await self._publish_discovery(client)
            self.publish_health()
            await self._serve(client)
        except asyncio.CancelledError:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(
                    self.status_topic, OFFLINE, qos=1, retain=True, timeout=SHUTDOWN_STEP_S
                )
            self._connected = False
            raise
        finally:
            await self._exit(client)

    async def _publish_discovery(self, client: aiomqtt.Client) -> None:
        """Publish every discovery config (retained; the broker may have lost them); the first
        time, also clear the configs a previous run published that are no longer rendered.

        The ledger is written BEFORE a topic is first published, so whenever this is cut short
        it still names every topic that may be retained on the broker.
        """
        ledger = None if self._discovery_settled else self.ledger
        current = set(self.discovery)
        previous = set(await ledger.load()) if ledger is not None else set()
        if ledger is not None and not current <= previous:
            await ledger.save(sorted(previous | current))
        await self._publish_retained(client, list(self.discovery.items()))
        if ledger is None:
            return
        stale = sorted(previous - current)
        await self._publish_retained(client, [(topic, b"") for topic in stale])
        if stale:
            log.info(
                "Home Assistant discovery: removed %d entity(ies) no longer configured", len(stale)
            )
            await ledger.save(sorted(current))
        self._discovery_settled = True

    @staticmethod
    async def _publish_retained(
        client: aiomqtt.Client, messages: Sequence[tuple[str, str | bytes]]
    ) -> None:
        """One after the other: measured faster than overlapping them through aiomqtt (209
        configs: 48 ms against 316 ms on loopback), and nothing is left in flight on failure."""
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1, retain=True)
            _raise_if_cancelling()

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Send and watch the connection until either stops; the first failure is raised.

        Two plain tasks rather than a TaskGroup: on 3.11 a TaskGroup whose child fails while it
        waits leaves a phantom cancel request on this task, which `_raise_if_cancelling` would
        take for a real one.
        """
        tasks = {
            asyncio.create_task(self._watch(client), name="mqtt-watch"),
            asyncio.create_task(self._send_forever(client), name="mqtt-send"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=SHUTDOWN_STEP_S)
        first = next(iter(done))
        for task in tasks - {first}:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: only the first failure matters
        first.result()  # raises the failure (normally MqttError)
        raise aiomqtt.MqttError(f"{first.get_name()} stopped")

    async def _enter(self, client: aiomqtt.Client) -> None:
        """Connect. A cancel landing mid-connect lets the attempt settle (briefly) and closes what
        it opened, so no socket or aiomqtt task outlives the monitor."""
        attempt = asyncio.create_task(client.__aenter__(), name="mqtt-connect")
        try:
            await asyncio.shield(attempt)
        except asyncio.CancelledError:
            done, _ = await asyncio.wait({attempt}, timeout=SHUTDOWN_STEP_S)
            if not done:
                attempt.cancel()
            elif not attempt.cancelled() and attempt.exception() is None:
                await self._exit(client)
            raise

    @staticmethod
    async def _exit(client: aiomqtt.Client) -> None:
        try:
            await asyncio.wait_for(client.__aexit__(None, None, None), SHUTDOWN_STEP_S)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.debug("MQTT disconnect did not complete cleanly: %s", exc)

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Dispatch commands; ends (MqttError) when the connection does."""
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes):
                payload = b"" if payload is None else str(payload).encode()
            self._on_message(str(message.topic), payload)
        raise aiomqtt.MqttError("MQTT message stream ended")

    def _on_message(self, topic: str, payload: bytes) -> None:
        prefix = f"{self.command_topic}/"
        if self.commands is None or not topic.startswith(prefix):
            return
        suffix = topic.removeprefix(prefix)
        if self.commands.is_result(suffix):
            return  # our own answer, heard through cmd/#
        if len(self._commands_running) >= MAX_COMMANDS_IN_FLIGHT:
            self._answer(suffix, self.commands.refusal(payload, "busy: too many commands running"))
            return
        task = asyncio.create_task(self._command(suffix, payload), name=f"mqtt-cmd:{suffix}")
        self._commands_running.add(task)
        task.add_done_callback(self._commands_running.discard)

    async def _command(self, suffix: str, payload: bytes) -> None:
        """Runs apart from the connection: a read that outlives a reconnect still answers."""
        assert self.commands is not None
        self._answer(suffix, await self.commands.handle(suffix, payload))

    def _answer(self, suffix: str, outcome: Mapping[str, Any]) -> None:
        self._queue_fifo(f"{self.command_topic}/{suffix}/result", outcome)

    def _queue_fifo(self, topic: str, payload: Payload) -> None:
        """The lane that is never coalesced (command answers, alerts); bounded all the same."""
        self._results.append((topic, _Outgoing(_encode(payload), 1, False)))
        while len(self._results) > MAX_PENDING_RESULTS:
            self._results.popleft()
            self.dropped += 1
        self._wake.set()

    async def _stop_commands(self) -> None:
        tasks = set(self._commands_running)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_STEP_S)

    async def _send_forever(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        next_health = loop.time() + self.publish_interval_secs
        while True:
            while self._results or self._pending:
                if self._results:
                    topic, message = self._results.popleft()
                    put_back = self._results.appendleft
                else:
                    topic, message = self._pending.popitem(last=False)
                    put_back = None
                try:
                    await client.publish(
                        topic, message.payload, qos=message.qos, retain=message.retain
                    )
                except aiomqtt.MqttError:
                    if put_back is not None:
                        put_back((topic, message))
                    else:
                        self._put_back(topic, message)
                    raise
                _raise_if_cancelling()
            self._wake.clear()
            remaining = next_health - loop.time()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._wake.wait()
            if loop.time() >= next_health:
                self.publish_health()
                next_health = loop.time() + self.publish_interval_secs

    def _put_back(self, topic: str, message: _Outgoing) -> None:
        """A message the broker did not take goes back first, unless a newer one replaced it."""
        if topic in self._pending:
            return
        if len(self._pending) >= self.config.queue_size:
            self.dropped += 1
            return
        self._pending[topic] = message
        self._pending.move_to_end(topic, last=False)

    def _note_connected(self) -> None:
        where = f"{self.config.host}:{self.config.port}"
        if self._broker_seen is False:
            log.info(
                "MQTT broker %s is back after %d failed attempt(s); %d message(s) dropped",
                where,
                self._failed_attempts,
                self.dropped - self._dropped_at_loss,
            )
        else:
            log.info("MQTT connected to %s as %s", where, self.client_id)
        self._broker_seen = True
        self._failed_attempts = 0

    def _note_failure(self, exc: aiomqtt.MqttError) -> None:
        where = f"{self.config.host}:{self.config.port}"
        self._failed_attempts += 1
        if self._broker_seen is not False:
            self._dropped_at_loss = self.dropped
        if self._broker_seen is True:
            log.warning("MQTT broker %s went away (%s); reconnecting", where, exc)
        elif self._broker_seen is None:
            log.warning("MQTT broker %s unreachable (%s); retrying", where, exc)
        else:
            log.debug("MQTT broker %s still unreachable (%s)", where, exc)
        self._broker_seen = False


async def feed_samples(monitor: Monitor, astore: AsyncStore, meters: Collection[str]) -> None:
    """Publish every sample stored from now on to `meters/<id>/values`, until cancelled.

    It follows the store's log (as uplinks do) instead of being called by the poller: the
    poller never knows MQTT exists, and the topic carries exactly what was recorded.
    """
    store = astore.store
    position = await astore.call(_newest_id, store, meters)
    while True:
        # Arm the wait BEFORE reading, so an append between the read and the wait is seen.
        waiter = asyncio.get_running_loop().create_task(
            astore.wait_appended(30.0), name="mqtt-values-idle"
        )
        try:
            await asyncio.sleep(0)
            batch: list[StoredSample] = await astore.call(store.read_all, position, 500)
            if not batch:
                await waiter
        finally:
            waiter.cancel()
        for stored in batch:
            position = stored.rowid
            if stored.sample.meter in meters:
                monitor.publish_sample(stored.sample)


def _newest_id(store: Store, meters: Collection[str]) -> int:
    """Row id of the newest stored sample of any of `meters` (0 when none): where to start."""
    newest = 0
    for meter in meters:
        ts_ms = store.last_ts(meter)
        if ts_ms is not None:
            rows = store.read_time_range(meter, ts_ms, ts_ms)
            if rows:
                newest = max(newest, rows[-1].rowid)
    return newest


async def measure_forever(
    health: Health,
    astore: AsyncStore,
    uplinks: Sequence[Uplink],
    *,
    every_secs: float,
    clock_trusted: Callable[[], bool] | None = None,
) -> None:
    """Fill Health with what only the store knows (size, backlog per uplink, dead letters) and
    the clock's state, every `every_secs`, until cancelled. One short query per stream, on the
    store's thread, so the data path is not held up."""
    streams = {uplink.name: list(uplink.streams()) for uplink in uplinks}
    while True:
        used, per_uplink = await astore.call(_store_figures, astore.store, streams)
        health.store_bytes = used
        health.store_budget_bytes = astore.store.budget_bytes
        for name, (rows, oldest, dead) in per_uplink.items():
            uplink = health.uplink(name)
            uplink.backlog_rows, uplink.oldest_undelivered_ts_ms, uplink.dead_letters = (
                rows,
                oldest,
                dead,
            )
        if clock_trusted is not None:
            health.clock_trusted = clock_trusted()
        health.clock_synchronized = kernel_clock_synchronized()
        await asyncio.sleep(every_secs)


def _store_figures(
    store: Store, streams: Mapping[str, Sequence[str]]
) -> tuple[int, dict[str, tuple[int, int | None, int]]]:
    figures: dict[str, tuple[int, int | None, int]] = {}
    for uplink, names in streams.items():
        backlogs = [store.backlog(uplink, stream) for stream in names]
        oldest = [b.oldest_ts_ms for b in backlogs if b.oldest_ts_ms is not None]
        figures[uplink] = (
            sum(b.rows for b in backlogs),
            min(oldest) if oldest else None,
            store.dead_letter_count(uplink),
        )
    return store.used_bytes(), figures


def operations_plane(
    config: Config,
    *,
    health: Health,
    version: str,
    astore: AsyncStore,
    poller: Poller,
    uplinks: Sequence[Uplink],
) -> list[tuple[str, Coroutine[Any, Any, None]]]:
    """The daemon's MQTT tasks, (name, coroutine), for a config with an `mqtt:` section."""
    mqtt = config.mqtt
    if mqtt is None:
        return []
    commands = CommandHandler(
        mqtt.commands,
        health=health,
        meters=config.meters,
        read_once=poller.read_once,
        store=astore,
        uplinks={uplink.name: uplink for uplink in uplinks},
        clock_trusted=poller.clock.trusted,
    )
    inventory = Inventory(
        config.gateway.id,
        meters=describe_meters(config.meters, config.buses),
        uplinks=tuple(uplink.name for uplink in uplinks),
    )
    monitor = Monitor(
        mqtt,
        gateway_id=config.gateway.id,
        health=health,
        version=version,
        inventory=inventory,
        commands=commands,
        ledger=StoreLedger(astore),
    )
    tasks: list[tuple[str, Coroutine[Any, Any, None]]] = [
        ("monitor", monitor.run()),
        (
            "store-figures",
            measure_forever(
                health,
                astore,
                uplinks,
                every_secs=mqtt.publish_interval_secs,
                clock_trusted=poller.clock.trusted,
            ),
        ),
    ]
    if mqtt.publish_values:
        meters = frozenset(meter.id for meter in config.meters)
        tasks.append(("mqtt-values", feed_samples(monitor, astore, meters)))
    return tasks


def _encode(payload: Payload) -> str:
    if isinstance(payload, str):
        return payload
    return json.dumps(payload, separators=(",", ":"), default=str)


def _raise_if_cancelling(cause: BaseException | None = None) -> None:
    """Honour a cancel that Python 3.11 lost on the way.

    On 3.11, `asyncio.wait_for` (awaited inside every aiomqtt call) returns the result and drops
    the cancel when both arrive together (fixed in 3.12). The request still shows in
    `Task.cancelling()`, so after each call into aiomqtt we look there: a monitor that ignored its
    cancel would keep the daemon from stopping (seen in test_cancel_at_any_moment...).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from cause
