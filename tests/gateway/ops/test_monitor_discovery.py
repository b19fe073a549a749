"""Home Assistant discovery through a real Mosquitto: retained, current, cleaned up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.health import Health, MeterState
from gateway.ops.discovery import LEDGER_KEY, LEDGER_OWNER, Inventory, MeterDescription, StoreLedger
from gateway.ops.monitor import Monitor
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from tests.fixtures.mosquitto import MosquittoBroker
from tests.gateway.ops.test_monitor import (
    Subscriber,
    fast_monitor,
    mqtt_config,
    retained_under,
    running,
    topic,
)
from tests.helpers.eventually import eventually

CHANNELS = frozenset({"power_active", "voltage_l1", "energy_active_import"})


def inventory(*meters: str) -> Inventory:
    return Inventory(
        "site-1",
        meters=tuple(MeterDescription(m, CHANNELS, model_id="sdm630") for m in meters),
        uplinks=("wattics",),
    )


def health_of(*meters: str) -> Health:
    health = Health()
    for meter in meters:
        health.meter(meter).state = MeterState.OK
        health.meter(meter).last_values = {"power_active": 1500.0, "energy_active_import": 2e6}
    health.uplink("wattics")
    return health


def discovering(
    broker: MosquittoBroker,
    meters: tuple[str, ...],
    ledger: StoreLedger | None,
    *,
    enabled: bool = True,
    prefix: str = "homeassistant",
) -> Monitor:
    config = mqtt_config(broker, homeassistant_discovery=enabled, discovery_prefix=prefix)
    monitor = fast_monitor(config, health_of(*meters))
    return Monitor(
        config,
        gateway_id="site-1",
        health=monitor.health,
        version="1.2.3",
        publish_interval_secs=monitor.publish_interval_secs,
        reconnect_min_secs=monitor.reconnect_min_secs,
        reconnect_max_secs=monitor.reconnect_max_secs,
        inventory=inventory(*meters),
        ledger=ledger,
    )


@pytest.fixture
async def astore(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    store = AsyncStore(Store(tmp_path / "gateway.sqlite3"))
    try:
        yield store
    finally:
        await store.aclose()


async def remembered(astore: AsyncStore) -> list[str]:
    """The discovery topics the gateway's store says it has published."""
    raw = await astore.state(LEDGER_OWNER, LEDGER_KEY)
    return [] if raw is None else list(json.loads(raw))


async def published(operator: Subscriber, monitor: Monitor) -> None:
    """Wait until the operator has seen every discovery config of `monitor`."""
    for config_topic, payload in monitor.discovery.items():
        await operator.until(config_topic, payload)


async def test_discovery_is_retained_refers_to_live_state_and_survives_a_broker_restart(
    mosquitto: MosquittoBroker,
) -> None:
    monitor = discovering(mosquitto, ("incomer", "pv"), None, prefix="ha")
    assert len(monitor.discovery) == 2 * (3 + 3) + 5 + 4  # 2 meters, gateway, 1 uplink
    async with running(monitor):
        async with Subscriber(mosquitto) as operator:
            await published(operator, monitor)
            await operator.until(topic("meters/pv/state"), lambda _: True)
            await operator.until(topic("uplinks/wattics/state"), lambda _: True)
        configs = await retained_under(mosquitto, "ha/#")
        assert configs == monitor.discovery
        state = await retained_under(mosquitto, "test-gw/#")
        for payload in map(json.loads, configs.values()):
            # Every sensor reads a topic a newcomer (Home Assistant after a restart) is handed.
            assert payload["state_topic"] in state
            availability = payload.get("availability_topic") or payload["availability"][0]["topic"]
            assert state[availability] == "online"
        assert json.loads(state[topic("meters/incomer/state")])["values"]["power_active"] == 1500

        mosquitto.stop()  # persistence is off: the broker forgets every retained message
        mosquitto.start()
        async with Subscriber(mosquitto) as operator:
            await published(operator, monitor)
        assert await retained_under(mosquitto, "ha/#") == monitor.discovery


async def test_a_meter_removed_from_config_loses_its_entities_at_the_next_start(
    mosquitto: MosquittoBroker, astore: AsyncStore
) -> None:
    ledger = StoreLedger(astore)
    before = discovering(mosquitto, ("incomer", "pv"), ledger)
    async with running(before), Subscriber(mosquitto) as operator:
        await published(operator, before)
    pv_topics = {t for t in before.discovery if "_pv_" in t}
    assert len(pv_topics) == 6

    after = discovering(mosquitto, ("incomer",), ledger)  # pv left the config
    assert set(after.discovery) == set(before.discovery) - pv_topics
    async with Subscriber(mosquitto) as home_assistant, running(after):
        # HA removes an entity when its config topic gets an empty payload.
        for pv_topic in pv_topics:
            await home_assistant.until(pv_topic, "")
        await published(home_assistant, after)

        # ... and the gateway forgets them once they are cleared.
        async def forgotten() -> bool:
            return set(await remembered(astore)) == set(after.discovery)

        await eventually(forgotten, timeout=3.0, what="the cleared entities to be forgotten")
    assert await retained_under(mosquitto, "homeassistant/#") == after.discovery

    # Discovery switched off: every entity this gateway created goes.
    off = discovering(mosquitto, ("incomer",), ledger, enabled=False)
    assert off.discovery == {}
    async with Subscriber(mosquitto) as home_assistant, running(off):
        for config_topic in after.discovery:
            await home_assistant.until(config_topic, "")
    assert await retained_under(mosquitto, "homeassistant/#") == {}


async def test_without_discovery_nothing_is_published_under_the_discovery_prefix(
    mosquitto: MosquittoBroker,
) -> None:
    monitor = discovering(mosquitto, ("incomer",), None, enabled=False)
    async with Subscriber(mosquitto) as operator, running(monitor):
        await operator.until(topic("meters/incomer/state"), lambda _: True)
        await asyncio.sleep(0.05)
    assert not [t for t in operator.latest if t.startswith("homeassistant/")]
