"""A message held for its unknown outcome, re-queued by a human, is sent once (issue 14 #11).

The human checked EnerKey and the hours are missing: `meter-gateway deadletters --uplink
enerkey --requeue` marks it, and the running uplink sends it before its next message. While
it is out it is held again, so a stop or a lost answer never sends it twice.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.health import Health
from core.sample import Sample
from gateway.cli import deadletters as deadletters_cli
from gateway.config.loader import parse_config
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from tests.fakes.enerkey import FakeEnerKey
from tests.gateway.uplinks.enerkey.test_enerkey_uplink import (
    MIN,
    T0,
    append,
    astore,  # noqa: F401  (the fixture)
    expected,
    hour,
    running,
    samples,
    uplink_for,
)
from tests.helpers.eventually import eventually


async def test_a_requeued_held_message_is_sent_once_and_leaves_the_table(
    fake_enerkey: FakeEnerKey,
    astore: AsyncStore,  # noqa: F811
) -> None:
    health = Health()
    await append(astore, samples("incomer", T0, hour(3) + MIN))
    # Not EnerKey's answer, not a page: the message may have arrived, so it is held.
    fake_enerkey.answer_with(200, b"OK", content_type="text/plain")
    uplink = uplink_for(fake_enerkey, astore, health, {"incomer": 4711})
    async with running(uplink):
        await eventually(lambda: health.uplink("enerkey").facts.get("unknown_outcomes") == 1)
        assert fake_enerkey.pushes == []  # (the page came from a proxy: EnerKey has nothing)
        (letter,) = await astore.run(lambda store: store.dead_letters("enerkey"))
        await astore.run(
            lambda store: store.requeue("enerkey", ids=[letter.id], now_ms=int(time.time() * 1e3))
        )
        await append(astore, samples("incomer", hour(3) + MIN, hour(4) + MIN))  # wakes it
        await eventually(lambda: len(fake_enerkey.pushes) == 2)
        await eventually(lambda: not astore.store.dead_letters("enerkey", include_requeued=True))
    assert fake_enerkey.duplicates() == []
    assert fake_enerkey.hours(4711) == pytest.approx(expected(range(1, 5)), abs=1e-6)
    assert [p.values[0][0] for p in fake_enerkey.pushes] == [hour(1), hour(4)]


def test_the_cli_requeues_enerkey_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`deadletters --uplink enerkey --requeue` (before: "supported for: wattics" only)."""
    config = parse_config(
        f'gateway: {{id: s, data_dir: "{tmp_path}"}}\n'
        "buses: {b: {type: modbus-tcp, host: 127.0.0.1, port: 5020}}\n"
        "meters: [{id: incomer, bus: b, unit: 1, model: sdm630}]\n"
        "uplinks:\n  enerkey: {api_keys: [k], meters: {incomer: {meter_id: 4711, unit: kWh}}}\n",
        "site.yaml",
        {},
    )
    with Store(tmp_path / "q.db") as store:
        (rowid,) = store.append([Sample("incomer", T0, {"energy_active_import": 1.0})])
        assert rowid is not None
        store.register_stream("enerkey", "4711", "incomer")
        store.park(
            "enerkey", "4711", rowid, payload="{}", status=None, body="outcome unknown: x",
            attempts=1, now_ms=0,
        )  # fmt: skip
        assert deadletters_cli.requeue(config, store, uplink="enerkey", stream=None, ids=None) == 0
        assert "1 item(s) will be sent" in capsys.readouterr().out
        assert store.requeued_letters("enerkey", "4711")
