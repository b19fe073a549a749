"""The MQTT monitor against a real Mosquitto broker: what an operator's subscriber would see."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from core.health import Health, MeterState
from core.sample import Sample
from gateway.config.schema import MqttConfig
from gateway.ops.health_topics import HealthRenderer, health_messages
from gateway.ops.monitor import Monitor
from gateway.ops.plane import measure_forever
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from tests.fixtures.mosquitto import MosquittoBroker
from tests.helpers.eventually import eventually
from tests.paths import REPO

PREFIX = "test-gw"


def mqtt_config(broker: MosquittoBroker, **overrides: Any) -> MqttConfig:
    fields: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "topic_prefix": PREFIX,
        "keepalive_secs": 5,
    }
    return MqttConfig(**(fields | overrides))


def fast_monitor(
    config: MqttConfig, health: Health, gateway_id: str = "site-1", interval_secs: float = 0.2
) -> Monitor:
    return Monitor(
        config,
        gateway_id=gateway_id,
        health=health,
        version="1.2.3",
        publish_interval_secs=interval_secs,
        reconnect_min_secs=0.05,
        reconnect_max_secs=0.2,
    )


@contextlib.asynccontextmanager
async def running(monitor: Monitor) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(monitor.run(), name="monitor-under-test")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Subscriber:
    """An operator's client: subscribes to everything and keeps the latest payload per topic."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker
        self.latest: dict[str, str] = {}
        self.history: dict[str, list[str]] = {}
        self._changed = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscriber:
        self._client = aiomqtt.Client(self.broker.host, self.broker.port, timeout=2)
        await self._client.__aenter__()
        await self._client.subscribe("#", qos=1)
        self._task = asyncio.create_task(self._collect(self._client), name="subscriber")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._client is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await self._task
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(None, None, None)

    async def _collect(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            self.latest[str(message.topic)] = message.payload.decode()
            self.history.setdefault(str(message.topic), []).append(message.payload.decode())
            self._changed.set()

    async def send(self, topic: str, payload: str | bytes) -> None:
        """Publish as this operator (QoS 1, not retained), e.g. a command."""
        assert self._client is not None
        await self._client.publish(topic, payload, qos=1)

    async def until(
        self, topic: str, check: Callable[[str], bool] | str, timeout: float = 5.0
    ) -> str:
        """The first payload on `topic` that passes `check` (or equals it, given a string)."""
        ok = (lambda payload: payload == check) if isinstance(check, str) else check
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                payload = self.latest.get(topic)
                if payload is not None and ok(payload):
                    return payload
                await self._changed.wait()


async def retained(broker: MosquittoBroker, topic: str) -> str:
    """What a client arriving now is handed for `topic`: the broker's retained message."""
    async with aiomqtt.Client(broker.host, broker.port, timeout=2) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(2):
            async for message in client.messages:
                assert message.retain, "expected the retained message first"
                assert isinstance(message.payload, bytes)
                return message.payload.decode()
    raise AssertionError("unreachable")


async def retained_under(broker: MosquittoBroker, pattern: str) -> dict[str, str]:
    """Every retained message matching `pattern` right now, as a newcomer would receive them.

    The broker sends retained messages right after the SUBACK; a marker published afterwards
    on the same connection arrives after all of them, so no timeout guesses the end.
    """
    marker = f"probe/{time.monotonic_ns()}"
    found: dict[str, str] = {}
    async with aiomqtt.Client(broker.host, broker.port, timeout=2) as client:
        await client.subscribe(pattern, qos=1)
        await client.subscribe(marker, qos=1)
        await client.publish(marker, b"end", qos=1)
        async with asyncio.timeout(3):
            async for message in client.messages:
                if str(message.topic) == marker:
                    return found
                assert isinstance(message.payload, bytes)
                found[str(message.topic)] = message.payload.decode()
    raise AssertionError("unreachable")


def topic(suffix: str, gateway_id: str = "site-1") -> str:
    return f"{PREFIX}/{gateway_id}/{suffix}"


def sample_health() -> Health:
    health = Health()
    meter = health.meter("incomer")
    meter.state = MeterState.DEGRADED
    meter.reads = 7
    meter.errors = Counter({"timeout": 2, "crc": 1})
    meter.last_error = "timeout after 3.0s"
    meter.last_read_ts_ms = 1_700_000_000_123
    meter.last_latency_s = 0.25
    meter.last_values = {"power_active": 1234.5, "frequency": float("nan")}
    uplink = health.uplink("wattics")
    uplink.delivered = 40
    uplink.retries = 3
    uplink.parked = 1
    uplink.last_success_ms = 1_700_000_001_000
    uplink.last_error = "HTTP 503"
    uplink.paused_reason = None
    return health


# --- rendering and buffering, no broker needed -------------------------------------------------


def test_health_renders_to_state_topics() -> None:
    health = sample_health()
    health.started_monotonic = 100.0
    health.store_bytes = 256 * 1024
    health.store_budget_bytes = 1024 * 1024
    health.clock_trusted = True
    health.clock_synchronized = False
    health.clock.check = "auto"
    health.clock.held = 3
    health.uplink("wattics").backlog_rows = 12
    health.uplink("wattics").oldest_undelivered_ts_ms = 1_700_000_000_000
    health.uplink("wattics").dead_letters = 1
    health.uplink("wattics").facts = {"calls_left": 39_000}
    rendered = dict(
        health_messages(health, version="9.9", now_monotonic=161.4, now_ms=1_700_000_125_400)
    )
    assert set(rendered) == {"state", "meters/incomer/state", "uplinks/wattics/state"}
    assert rendered["state"] == {
        "version": "9.9",
        "started": "2023-11-14T22:14:24.000Z",  # now - 61.4 s of uptime
        "uptime_s": 61,
        "store_bytes": 262_144,
        "store_budget_bytes": 1_048_576,
        "store_used_pct": 25.0,
        "store_full": False,
        "clock_trusted": True,
        "clock_synchronized": False,
        "clock": {
            "check": "auto",
            "held": 3,
            "released": 0,
            "unsynced_stored": 0,
            "steps": 0,
            "last_step_s": None,
            "refused_after_step": 0,
        },
        "samples_per_min": round(7 * 60 / 61.4, 2),  # 7 reads since start
        "meters": {"ok": 0, "degraded": 1, "offline": 0},
        "alerts": 0,
        "last_alert": None,
    }
    meter = rendered["meters/incomer/state"]
    assert meter["state"] == "degraded"
    assert meter["errors"] == {"timeout": 2, "crc": 1}
    assert meter["errors_total"] == 3
    assert meter["last_read_ts"] == "2023-11-14T22:13:20.123Z"
    assert meter["values"] == {"power_active": 1234.5, "frequency": None}  # NaN is not JSON
    assert meter["units"] == {"power_active": "W", "frequency": "Hz"}
    uplink = rendered["uplinks/wattics/state"]
    assert uplink["last_success"] == "2023-11-14T22:13:21.000Z"
    assert uplink["backlog_rows"] == 12
    assert uplink["oldest_undelivered"] == "2023-11-14T22:13:20.000Z"
    assert uplink["oldest_undelivered_age_s"] == 125
    assert (uplink["dead_letters"], uplink["facts"]) == (1, {"calls_left": 39_000})
    json.dumps(rendered, allow_nan=False)  # every payload is strict JSON


def test_rates_follow_the_last_minute_not_the_whole_uptime() -> None:
    health = Health(started_monotonic=0.0)
    meter = health.meter("incomer")
    bus = health.bus("plant")
    bus.since_monotonic = 0.0
    renderer = HealthRenderer("t", rate_window_s=60)

    def render(now: float) -> dict[str, dict[str, Any]]:
        return dict(renderer.render(health, now_monotonic=now, now_ms=1_700_000_000_000))

    meter.reads, bus.busy_s, bus.transactions = 100, 10.0, 300
    first = render(100.0)
    assert first["state"]["samples_per_min"] == 60.0  # 100 reads in 100 s
    assert first["buses/plant/state"]["utilisation"] == 0.1
    meter.reads, bus.busy_s = 130, 40.0  # the meter slowed down, the line got busy
    second = render(160.0)
    assert second["state"]["samples_per_min"] == 30.0  # 30 reads in the last 60 s
    assert second["buses/plant/state"]["utilisation"] == 0.5
    assert second["buses/plant/state"]["utilisation_since_start"] == 0.25
    assert second["buses/plant/state"]["transactions"] == 300


class TwoStreamUplink:
    name = "wattics"

    def streams(self) -> dict[str, str]:
        return {"s-a": "a", "s-b": "b"}

    async def run(self) -> None:
        return None


async def test_store_figures_reach_health(tmp_path: Path) -> None:
    astore = AsyncStore(Store(tmp_path / "g.sqlite3", budget_bytes=10_000_000))
    try:
        store = astore.store
        for stream, meter in TwoStreamUplink().streams().items():
            store.register_stream("wattics", stream, meter)
        ids = store.append(
            [Sample(m, ts, {"power_active": 1.0}) for ts in (1000, 2000, 3000) for m in "ab"]
        )
        store.advance("wattics", "s-a", ids[4] or 0)  # a: 3 delivered; b: 1 delivered, 2 waiting
        store.park(
            "wattics", "s-b", ids[1] or 0, payload="{}", status=400, body="no", attempts=3, now_ms=1
        )
        health = Health()
        task = asyncio.create_task(
            measure_forever(
                health, astore, [TwoStreamUplink()], every_secs=60, clock_trusted=lambda: True
            )
        )
        await eventually(lambda: health.store_bytes is not None, timeout=3.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await astore.aclose()
    uplink = health.uplink("wattics")
    assert (uplink.backlog_rows, uplink.oldest_undelivered_ts_ms, uplink.dead_letters) == (
        2,
        2000,
        1,
    )
    assert health.store_budget_bytes == 10_000_000
    assert health.store_bytes is not None and health.store_bytes > 0
    assert health.clock_trusted is True
    assert health.clock_synchronized in (True, False, None)  # the kernel's answer, whatever it is


def test_publish_coalesces_per_topic_and_drops_oldest_when_full() -> None:
    config = MqttConfig(host="127.0.0.1", port=1, topic_prefix=PREFIX, queue_size=10)
    monitor = Monitor(config, gateway_id="site-1", health=Health(), version="t")
    for value in range(5):
        monitor.publish("live/incomer", {"power_active": value})
    assert (monitor.pending, monitor.coalesced, monitor.dropped) == (1, 4, 0)
    for n in range(25):
        monitor.publish(f"live/m{n}", "x")
    assert monitor.pending == 10
    assert monitor.dropped == 16  # live/incomer and the 15 oldest meters went first


@pytest.mark.parametrize("suffix", ["", "/abs", "meters/+/state", "meters/#"])
def test_publish_refuses_bad_topic_suffix(suffix: str) -> None:
    monitor = Monitor(MqttConfig(host="127.0.0.1"), gateway_id="g", health=Health(), version="t")
    with pytest.raises(ValueError, match="topic suffix"):
        monitor.publish(suffix, "x")


# --- against the real broker --------------------------------------------------------------------


async def test_online_retained_while_running_offline_after_clean_stop(
    mosquitto: MosquittoBroker,
) -> None:
    monitor = fast_monitor(mqtt_config(mosquitto), Health())
    async with Subscriber(mosquitto) as operator:
        task = asyncio.create_task(monitor.run())
        try:
            await operator.until(topic("status"), "online")
            assert await retained(mosquitto, topic("status")) == "online"
        finally:
            started = time.monotonic()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            stop_s = time.monotonic() - started
        await operator.until(topic("status"), "offline")
    assert stop_s < 1.0
    assert await retained(mosquitto, topic("status")) == "offline"


async def test_broker_publishes_last_will_when_the_gateway_dies(
    mosquitto: MosquittoBroker,
) -> None:
    script = (
        "import asyncio, sys\n"
        "from gateway.config.schema import MqttConfig\n"
        "from core.health import Health\n"
        "from gateway.ops.monitor import Monitor\n"
        "config = MqttConfig(host=sys.argv[1], port=int(sys.argv[2]), topic_prefix=sys.argv[3],"
        " keepalive_secs=5)\n"
        "asyncio.run(Monitor(config, gateway_id='doomed', health=Health(), version='t').run())\n"
    )
    env = os.environ | {"PYTHONPATH": str(REPO)}
    async with Subscriber(mosquitto) as operator:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, mosquitto.host, str(mosquitto.port), PREFIX, env=env
        )
        try:
            await operator.until(topic("status", "doomed"), "online", timeout=10)
            process.send_signal(signal.SIGKILL)  # no chance to say goodbye
            await process.wait()
            await operator.until(topic("status", "doomed"), "offline", timeout=3)
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
    assert await retained(mosquitto, topic("status", "doomed")) == "offline"


async def test_meter_and_uplink_state_carry_health_values(mosquitto: MosquittoBroker) -> None:
    health = sample_health()
    monitor = fast_monitor(mqtt_config(mosquitto), health)
    async with Subscriber(mosquitto) as operator, running(monitor):
        meter = json.loads(await operator.until(topic("meters/incomer/state"), lambda _: True))
        uplink = json.loads(await operator.until(topic("uplinks/wattics/state"), lambda _: True))
        state = json.loads(await operator.until(topic("state"), lambda _: True))
        assert meter == {
            "state": "degraded",
            "reads": 7,
            "errors": {"timeout": 2, "crc": 1},
            "errors_total": 3,
            "consecutive_errors": 0,
            "skipped_ticks": 0,
            "refused_older": 0,
            "last_error": "timeout after 3.0s",
            "last_read_ts": "2023-11-14T22:13:20.123Z",
            "last_latency_s": 0.25,
            "last_lateness_s": None,
            "late_reads": 0,
            "next_attempt_ts": None,
            "values": {"power_active": 1234.5, "frequency": None},
            "units": {"power_active": "W", "frequency": "Hz"},
            "counter_resets": 0,
            "counter_jumps": 0,
            "last_counter_problem": None,
            "refused_clock_step": 0,
            "implausible_values": 0,
            "last_implausible": None,
            "facts": {},
        }
        assert uplink == {
            "delivered": 40,
            "retries": 3,
            "parked": 1,
            "last_success": "2023-11-14T22:13:21.000Z",
            "last_error": "HTTP 503",
            "last_error_ts": None,
            "paused_reason": None,
            "backlog_rows": None,  # not measured yet: the daemon fills it from the store
            "oldest_undelivered": None,
            "oldest_undelivered_age_s": None,
            "dead_letters": None,
            "facts": {},
        }
        assert (state["version"], state["store_full"], state["alerts"]) == ("1.2.3", False, 0)

        # Producers keep updating Health; the next interval publishes what changed.
        health.meter("incomer").reads = 8
        health.uplink("wattics").paused_reason = "credentials refused (401)"
        health.store_full = True
        health.alert("store", "disk budget reached")
        await operator.until(topic("meters/incomer/state"), lambda p: json.loads(p)["reads"] == 8)
        paused = await operator.until(
            topic("uplinks/wattics/state"), lambda p: json.loads(p)["paused_reason"] is not None
        )
        assert json.loads(paused)["paused_reason"] == "credentials refused (401)"
        state = json.loads(
            await operator.until(topic("state"), lambda p: json.loads(p)["alerts"] == 1)
        )
        assert state["store_full"] is True
        assert state["last_alert"]["message"] == "disk budget reached"
    assert json.loads(await retained(mosquitto, topic("meters/incomer/state")))["reads"] == 8


async def test_every_alert_is_published_even_several_within_one_interval(
    mosquitto: MosquittoBroker,
) -> None:
    """`state` names only the last alert; the `alerts` topic carries each one, in order."""
    health = Health()
    health.alert("store", "database was corrupt: moved aside")  # before the monitor runs
    monitor = fast_monitor(mqtt_config(mosquitto), health, interval_secs=1.0)
    async with Subscriber(mosquitto) as operator, running(monitor):
        await operator.until(topic("state"), lambda p: json.loads(p)["alerts"] == 1)
        for n in range(3):  # within one publish interval
            health.alert("enerkey", f"key {n} refused")
        await operator.until(topic("state"), lambda p: json.loads(p)["alerts"] == 4)
        await asyncio.sleep(0.2)
    alerts = [json.loads(p) for p in operator.history[topic("alerts")]]
    assert [(a["source"], a["message"]) for a in alerts] == [
        ("store", "database was corrupt: moved aside"),
        ("enerkey", "key 0 refused"),
        ("enerkey", "key 1 refused"),
        ("enerkey", "key 2 refused"),
    ]
    assert all(a["ts"].endswith("Z") for a in alerts)
    assert topic("alerts") not in await retained_under(mosquitto, topic("#"))  # events, not state


async def test_broker_away_publish_stays_instant_and_bounded_then_state_is_current(
    mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.ops.monitor")
    health = sample_health()
    # A long interval_secs: state after the restart can only come from the publish on (re)connect.
    monitor = fast_monitor(mqtt_config(mosquitto, queue_size=10), health, interval_secs=60)
    async with running(monitor):
        async with Subscriber(mosquitto) as operator:
            await operator.until(topic("status"), "online")
        mosquitto.stop()
        await eventually(lambda: not monitor.connected, timeout=3.0)

        # The data path keeps publishing while the broker is away: never blocked, never unbounded.
        dropped_before = monitor.dropped
        started = time.perf_counter()
        for n in range(1000):
            monitor.publish(f"live/m{n}", {"power_active": n}, retain=True)
        for n in range(50):
            monitor.publish("live/incomer", {"power_active": n}, retain=True)
        elapsed = time.perf_counter() - started
        assert elapsed < 0.1
        assert monitor.pending == 10
        assert monitor.dropped - dropped_before == 1000 + 1 - 10
        health.meter("incomer").reads = 99  # changed while nobody could hear

        await asyncio.sleep(0.3)  # a few failed reconnect attempts
        mosquitto.start()  # persistence is off: the new broker holds no retained message at all
        async with Subscriber(mosquitto) as operator:
            await operator.until(topic("status"), "online")
            await operator.until(
                topic("meters/incomer/state"), lambda p: json.loads(p)["reads"] == 99
            )
            coalesced = await operator.until(topic("live/incomer"), lambda _: True)
            assert json.loads(coalesced) == {"power_active": 49}  # the latest payload only
            assert (await operator.until(topic("live/m999"), lambda _: True)) is not None
        assert topic("live/m990") not in operator.latest  # dropped: only 10 topics were kept
        assert await retained(mosquitto, topic("status")) == "online"

    messages = [r.getMessage() for r in caplog.records if r.name == "gateway.ops.monitor"]
    assert sum("went away" in m for m in messages) == 1
    assert sum("is back" in m for m in messages) == 1
    assert not any("still unreachable" in m for m in messages)  # those are debug only


async def test_cancel_while_broker_is_away_is_fast(mosquitto: MosquittoBroker) -> None:
    mosquitto.stop()
    monitor = fast_monitor(mqtt_config(mosquitto), Health())
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.2)
    started = time.monotonic()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.5
    assert not monitor.connected


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(path), "gateway", "s3cret-Pa55"],
        check=True,
        capture_output=True,
    )
    path.chmod(0o600)
    return path


async def test_authenticates_and_never_logs_the_password(
    password_file: Path,
    mosquitto_factory: Callable[[str], MosquittoBroker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = mosquitto_factory(f"allow_anonymous false\npassword_file {password_file}\n")
    wrong = fast_monitor(mqtt_config(broker, username="gateway", password="wrong-Pa55"), Health())
    async with running(wrong):
        await eventually(
            lambda: any("unreachable" in r.getMessage() for r in caplog.records), timeout=3.0
        )
    assert not wrong.connected

    right = fast_monitor(mqtt_config(broker, username="gateway", password="s3cret-Pa55"), Health())
    async with running(right):
        await eventually(lambda: right.connected, timeout=3.0)
    assert "s3cret-Pa55" not in caplog.text
    assert "wrong-Pa55" not in caplog.text
    assert "s3cret-Pa55" not in repr(right.config)


async def test_cancel_at_any_moment_leaves_nothing_behind(mosquitto: MosquittoBroker) -> None:
    """Cancelled mid-connect, mid-handshake or mid-session: fast, and no socket or task leaks."""
    for step in range(25):
        monitor = fast_monitor(mqtt_config(mosquitto), Health())
        task = asyncio.create_task(monitor.run())
        await asyncio.sleep(step * 0.002)
        started = time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(2):
                await task
        assert task.cancelled(), f"cancel at {step * 2} ms was not honoured"
        assert time.monotonic() - started < 1.0
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.sleep(0)
        assert [t.get_name() for t in others if not t.done()] == []
    assert await retained(mosquitto, topic("status")) == "offline"
