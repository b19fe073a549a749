"""The operations plane's MQTT connection: gateway health published to a broker, never in the way
of the data path.

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

`gateway.ops.health_topics` renders Health into (topic suffix, payload) pairs on its own;
`gateway.ops.discovery` renders Home Assistant discovery, `gateway.ops.commands` answers
commands, and `gateway.ops.plane` wires the monitor and what feeds it into the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt

from core.backoff import Backoff, equal_jitter
from core.cancel import raise_if_cancelling
from core.health import Health
from core.redact import redact, redact_value
from core.sample import Sample
from gateway.config.schema import MqttConfig, MqttTlsConfig
from gateway.ops.commands import CommandHandler, shown
from gateway.ops.discovery import DiscoveryLedger, Inventory, discovery_messages
from gateway.ops.health_topics import HealthRenderer, alert_message, sample_message

log = logging.getLogger(__name__)

ONLINE = "online"
OFFLINE = "offline"
#: How long a cancelled monitor spends saying `offline` and disconnecting, at most (each step).
SHUTDOWN_STEP_S = 0.5
#: Commands running at once; one more is answered `busy` at once.
MAX_COMMANDS_IN_FLIGHT = 8
#: Command answers waiting for the broker beyond this many: the oldest is dropped (counted).
MAX_PENDING_RESULTS = 100

Payload = Mapping[str, Any] | str


@dataclass(frozen=True, slots=True)
class _Outgoing:
    payload: str | bytes
    qos: int
    retain: bool


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
                ha_min_version=config.homeassistant_min_version,
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
            self._queue_fifo(f"{self.base_topic}/alerts", alert_message(alert))

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
                    raise_if_cancelling(exc)
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
            keepalive=round(self.config.keepalive_secs),
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
                raise_if_cancelling()
            await client.publish(self.status_topic, ONLINE, qos=1, retain=True)
            raise_if_cancelling()
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
            raise_if_cancelling()

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
        finally:
            _retrieve_disconnect(client)

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
        task = asyncio.create_task(self._command(suffix, payload), name=f"mqtt-cmd:{shown(suffix)}")
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
                raise_if_cancelling()
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


def _encode(payload: Payload) -> str:
    """The payload as sent: JSON text with every secret the process knows masked (a server's
    echo may sit in any health field or alert)."""
    if isinstance(payload, str):
        return redact(payload)
    return json.dumps(redact_value(payload), separators=(",", ":"), default=str)


def _retrieve_disconnect(client: aiomqtt.Client) -> None:
    """Retrieve the exception of a lost connection, which aiomqtt may leave unretrieved.

    aiomqtt (2.5) sets its `_disconnected` future to the disconnect's exception; only a message
    iteration running at that moment retrieves it, and `__aexit__` returns early once it is
    set. A connection lost during subscribe, `online` or discovery (before the watcher runs)
    thus logged "Future exception was never retrieved" when the client was dropped.
    """
    for name in ("_disconnected", "_connected"):
        future = getattr(client, name, None)
        if isinstance(future, asyncio.Future) and future.done() and not future.cancelled():
            future.exception()
