"""The operations plane: gateway health published over MQTT, never in the way of the data path.

Invariants:
- `Monitor.publish()` is synchronous and never blocks or awaits the broker. It puts the message in
  one bounded buffer keyed by topic, so a topic waiting to be sent holds only its latest payload
  (telemetry coalesces while the broker is away); beyond `queue_size` topics the oldest is dropped
  and counted in `dropped`.
- `<prefix>/<gateway id>/status` is `online` (retained) while connected. The broker publishes the
  last will `offline` (retained) if the connection dies; a clean shutdown publishes `offline` itself
  before disconnecting.
- Health state topics are re-rendered from `Health` right after every (re)connect and then every
  `publish_interval_secs`, always retained, so a subscriber that arrives late sees current state.
- Each connection attempt uses a fresh aiomqtt client: an attempt abandoned half-way (cancelled,
  timed out) can leave a client unusable, and a client is cheap.
- The broker going away is logged once, its return once; attempts in between only count.

`health_messages()` renders Health into (topic suffix, payload) pairs on its own, so the wider
operations plane (Home Assistant discovery, commands) can add renderers beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiomqtt

from gateway.config import MqttSection
from gateway.health import Health, MeterHealth, UplinkHealth

log = logging.getLogger(__name__)

ONLINE = "online"
OFFLINE = "offline"
#: How long a cancelled monitor spends saying `offline` and disconnecting, at most (each step).
SHUTDOWN_STEP_S = 0.5

Payload = Mapping[str, Any] | str


@dataclass(frozen=True, slots=True)
class _Outgoing:
    payload: str
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
    return {
        "state": str(meter.state),
        "reads": meter.reads,
        "errors": dict(meter.errors),
        "consecutive_errors": meter.consecutive_errors,
        "skipped_ticks": meter.skipped_ticks,
        "refused_older": meter.refused_older,
        "last_error": meter.last_error,
        "last_read_ts": _iso(meter.last_read_ts_ms),
        "last_latency_s": _finite(meter.last_latency_s),
        "values": {name: _finite(value) for name, value in meter.last_values.items()},
    }


def uplink_state(uplink: UplinkHealth) -> dict[str, Any]:
    return {
        "delivered": uplink.delivered,
        "retries": uplink.retries,
        "parked": uplink.parked,
        "last_success": _iso(uplink.last_success_ms),
        "last_error": uplink.last_error,
        "last_error_ts": _iso(uplink.last_error_ms),
        "paused_reason": uplink.paused_reason,
    }


def health_messages(
    health: Health, *, version: str, now_monotonic: float | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """Health as retained state topics: `state`, `meters/<id>/state`, `uplinks/<name>/state`."""
    now = time.monotonic() if now_monotonic is None else now_monotonic
    last_alert = health.alerts[-1] if health.alerts else None
    messages: list[tuple[str, dict[str, Any]]] = [
        (
            "state",
            {
                "version": version,
                "uptime_s": max(0, round(now - health.started_monotonic)),
                "store_full": health.store_full,
                "alerts": len(health.alerts),
                "last_alert": None
                if last_alert is None
                else {
                    "ts": _iso(last_alert.ts_ms),
                    "source": last_alert.source,
                    "message": last_alert.message,
                },
            },
        )
    ]
    messages += [(f"meters/{m.meter}/state", meter_state(m)) for m in health.meters.values()]
    messages += [(f"uplinks/{u.uplink}/state", uplink_state(u)) for u in health.uplinks.values()]
    return messages


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


class Monitor:
    """Publishes gateway status and health to an MQTT broker until cancelled."""

    def __init__(
        self,
        config: MqttSection,
        *,
        gateway_id: str,
        health: Health,
        version: str,
        publish_interval_secs: float = 10.0,
        reconnect_min_secs: float = 0.5,
        reconnect_max_secs: float = 30.0,
    ) -> None:
        self.config = config
        self.health = health
        self.version = version
        self.publish_interval_secs = publish_interval_secs
        self.reconnect_min_secs = reconnect_min_secs
        self.reconnect_max_secs = reconnect_max_secs
        self.client_id = config.client_id or f"meter-gateway-{gateway_id}"
        self.base_topic = f"{config.topic_prefix.strip('/')}/{gateway_id}"
        self.status_topic = f"{self.base_topic}/status"
        #: Messages refused because the buffer was full (the oldest topic goes first).
        self.dropped = 0
        #: Messages replaced by a newer payload for the same topic before they were sent.
        self.coalesced = 0
        self._pending: OrderedDict[str, _Outgoing] = OrderedDict()
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
        """Messages waiting for the broker (never more than `queue_size`)."""
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
        for suffix, payload in health_messages(self.health, version=self.version):
            self.publish(suffix, payload, retain=True, qos=1)

    async def run(self) -> None:
        """Connect, publish, reconnect with capped backoff; returns only by cancellation."""
        failures = 0
        while True:
            client = self._client()
            try:
                await self._session(client)
            except aiomqtt.MqttError as exc:
                _raise_if_cancelling(exc)
                if self._connected:
                    failures = 0
                self._connected = False
                self._note_failure(exc)
            failures += 1
            ceiling = min(self.reconnect_max_secs, self.reconnect_min_secs * 2 ** (failures - 1))
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    def _client(self) -> aiomqtt.Client:
        password = self.config.password
        return aiomqtt.Client(
            self.config.host,
            self.config.port,
            identifier=self.client_id,
            username=self.config.username,
            password=None if password is None else password.get_secret_value(),
            keepalive=self.config.keepalive_secs,
            will=aiomqtt.Will(self.status_topic, OFFLINE, qos=1, retain=True),
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection, from CONNACK until it breaks (MqttError) or we are cancelled."""
        await self._enter(client)
        try:
            await client.publish(self.status_topic, ONLINE, qos=1, retain=True)
            _raise_if_cancelling()
            self._connected = True
            self._note_connected()
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

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        """Ends (MqttError) when the connection does; commands will be dispatched from here."""
        async for _message in client.messages:
            pass
        raise aiomqtt.MqttError("MQTT message stream ended")

    async def _send_forever(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        next_health = loop.time() + self.publish_interval_secs
        while True:
            while self._pending:
                topic, message = self._pending.popitem(last=False)
                try:
                    await client.publish(
                        topic, message.payload, qos=message.qos, retain=message.retain
                    )
                except aiomqtt.MqttError:
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
