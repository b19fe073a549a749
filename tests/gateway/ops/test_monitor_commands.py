"""Commands over a real Mosquitto: an operator publishes to cmd/, the gateway answers .../result."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from drivers.modbus.config import ModbusTcpBusConfig
from drivers.simulator import SimulatedMeter
from gateway.config.schema import MqttCommandsConfig
from gateway.ops.monitor import Monitor
from tests.fixtures.mosquitto import MosquittoBroker
from tests.gateway.ops.test_commands import Site, open_site
from tests.gateway.ops.test_monitor import Subscriber, mqtt_config, running, topic

READ = topic("cmd/meters/incomer/read")


def commanded(broker: MosquittoBroker, site: Site, commands: MqttCommandsConfig) -> Monitor:
    return Monitor(
        mqtt_config(broker),
        gateway_id="site-1",
        health=site.health,
        version="1.2.3",
        publish_interval_secs=0.2,
        reconnect_min_secs=0.05,
        reconnect_max_secs=0.2,
        commands=site.handler(commands),
    )


@pytest.fixture
async def site(tmp_path: Path, sdm630_server: tuple[int, SimulatedMeter]) -> AsyncIterator[Site]:
    async with open_site(tmp_path, sdm630_server[0]) as opened:
        yield opened


async def answer(operator: Subscriber, command_topic: str, request_id: str) -> dict[str, object]:
    """Send a command and wait for ITS answer (matched by request id)."""
    await operator.send(command_topic, json.dumps({"request_id": request_id}))
    payload = await operator.until(
        f"{command_topic}/result", lambda p: json.loads(p).get("request_id") == request_id
    )
    outcome: dict[str, object] = json.loads(payload)
    return outcome


async def test_read_command_round_trip_stores_a_new_sample(
    mosquitto: MosquittoBroker, site: Site
) -> None:
    monitor = commanded(mosquitto, site, MqttCommandsConfig(read=True))
    async with Subscriber(mosquitto) as operator, running(monitor):
        await operator.until(topic("status"), "online")
        outcome = await answer(operator, READ, "r-1")
        assert outcome["ok"] is True, outcome
        assert outcome["stored"] is True
        values = outcome["values"]
        assert isinstance(values, dict) and values["voltage_l1"] == 230.5
        assert await site.stored("incomer") == 1
        # The meter state topic shows the read too.
        state = await operator.until(
            topic("meters/incomer/state"), lambda p: json.loads(p)["reads"] == 1
        )
        assert json.loads(state)["state"] == "ok"
    # Our own answers arrive on cmd/# too; they are never taken for commands.
    assert not [t for t in operator.latest if t.endswith("/result/result")]
    assert len(operator.history[f"{READ}/result"]) == 1


async def test_answers_are_never_coalesced(mosquitto: MosquittoBroker, site: Site) -> None:
    monitor = commanded(mosquitto, site, MqttCommandsConfig(read=True))
    async with Subscriber(mosquitto) as operator, running(monitor):
        await operator.until(topic("status"), "online")
        for n in range(3):
            await operator.send(READ, json.dumps({"request_id": n}))
        await operator.until(
            f"{READ}/result", lambda _: len(operator.history[f"{READ}/result"]) == 3
        )
    answered = [json.loads(p)["request_id"] for p in operator.history[f"{READ}/result"]]
    assert sorted(answered) == [0, 1, 2]


async def test_disabled_command_is_refused_and_nothing_is_read(
    mosquitto: MosquittoBroker, site: Site
) -> None:
    monitor = commanded(mosquitto, site, MqttCommandsConfig())  # the default: all off
    async with Subscriber(mosquitto) as operator, running(monitor):
        await operator.until(topic("status"), "online")
        outcome = await answer(operator, READ, "no")
        flush = await answer(operator, topic("cmd/uplinks/wattics/flush"), "no-flush")
    assert outcome == {"request_id": "no", "ok": False, "error": "command disabled"}
    assert flush == {"request_id": "no-flush", "ok": False, "error": "command disabled"}
    assert await site.stored("incomer") == 0
    assert site.health.meter("incomer").reads == 0


async def test_pts_submit_without_a_pts_uplink(mosquitto: MosquittoBroker, site: Site) -> None:
    monitor = commanded(mosquitto, site, MqttCommandsConfig(pts_submit=True))
    async with Subscriber(mosquitto) as operator, running(monitor):
        await operator.until(topic("status"), "online")
        outcome = await answer(operator, topic("cmd/pts/submit"), "p")
    assert outcome == {"request_id": "p", "ok": False, "error": "pts uplink not configured"}


async def test_commands_are_heard_again_after_the_broker_restarts(
    mosquitto: MosquittoBroker, site: Site
) -> None:
    monitor = commanded(mosquitto, site, MqttCommandsConfig(read=True))
    async with running(monitor):
        async with Subscriber(mosquitto) as operator:
            await operator.until(topic("status"), "online")
        mosquitto.stop()
        mosquitto.start()  # a new broker knows no subscription: the gateway must renew its own
        async with Subscriber(mosquitto) as operator:
            await operator.until(topic("status"), "online")
            outcome = await answer(operator, READ, "after-restart")
    assert outcome["ok"] is True
    assert await site.stored("incomer") == 1


async def test_the_gateway_subscribes_only_to_its_own_command_topics(
    mosquitto_factory: Callable[[str], MosquittoBroker], site: Site
) -> None:
    broker = mosquitto_factory("log_type subscribe")
    monitor = commanded(broker, site, MqttCommandsConfig(read=True))
    async with Subscriber(broker) as operator, running(monitor):
        await operator.until(topic("status"), "online")
        # Another gateway's command: not ours to hear.
        await operator.send(topic("cmd/meters/incomer/read", "site-2"), b"")
        await answer(operator, READ, "mine")  # ours is answered, after the other was sent
    assert topic("cmd/meters/incomer/read/result", "site-2") not in operator.latest
    assert await site.stored("incomer") == 1
    subscriptions = re.findall(rf"{monitor.client_id} \d (\S+)", broker.log_tail(200))
    assert subscriptions == ["test-gw/site-1/cmd/#"]


async def test_a_command_running_when_the_gateway_stops_is_cancelled_cleanly(
    mosquitto: MosquittoBroker, site: Site
) -> None:
    dead_bus = site.config.buses["dead"]
    assert isinstance(dead_bus, ModbusTcpBusConfig)

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read()  # takes the request, answers nothing
        writer.close()

    silent = await asyncio.start_server(never_answer, "127.0.0.1", dead_bus.port)
    monitor = commanded(mosquitto, site, MqttCommandsConfig(read=True))
    try:
        async with Subscriber(mosquitto) as operator:
            task = asyncio.create_task(monitor.run())
            try:
                await operator.until(topic("status"), "online")
                await operator.send(topic("cmd/meters/gone/read"), b"")  # waits 0.2 s for nothing
                await operator.until(topic("meters/gone/state"), lambda _: True)
                assert len(monitor._commands_running) == 1  # the read is in flight
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        assert not monitor._commands_running  # cancelled with the monitor, not left behind
    finally:
        silent.close()
        await silent.wait_closed()
