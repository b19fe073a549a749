"""Serial meters over time: a push meter sampled onto the poll cadence (exactly one sample per
interval, the newest complete telegram at each boundary), an SML head unplugged and plugged in
again, and a D0 meter whose baud-rate switch fails, read at the sign-on rate instead."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.health import Health
from drivers.base import MeterReader, MeterReadError
from drivers.factory import open_readers
from drivers.serial.iec62056 import Iec62056Reader
from gateway.config.schema import Config
from gateway.poller import Poller
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from tests.drivers.serial.test_iec62056 import MIN_REACTION_SECS, d0_config, rate_of
from tests.drivers.serial.test_sml import TYPICAL_VALUES, sml_config, typical
from tests.fakes.serial_meters import D0Meter, PtyDevice
from tests.fakes.telegrams import D0_BLOCK, D0_IDENTIFICATION, D0_VALUES, dsmr5_example
from tests.fixtures.socat import PtyPair
from tests.helpers.eventually import eventually

#: The meter pushes every PUSH_SECS; the poller samples every INTERVAL_SECS.
PUSH_SECS = 0.1
INTERVAL_SECS = 0.25
#: How far a telegram's send time may lie from a boundary and still count as "at" it: the
#: pty, the framer and the event loop take a few milliseconds, well under one push period.
SLACK_SECS = 0.04


@pytest.fixture
async def pty(tmp_path: Path) -> AsyncIterator[PtyPair]:
    async with PtyPair(tmp_path) as pair:
        yield pair


def numbered(k: int) -> bytes:
    """The DSMR 5 example telegram with power_active = k W (its CRC recomputed)."""
    return dsmr5_example(**{"01.193*kW": f"{k // 1000:02d}.{k % 1000:03d}*kW"})


async def test_a_push_meter_gives_one_sample_per_interval_the_newest_at_each_boundary(
    pty: PtyPair, tmp_path: Path
) -> None:
    config = Config.model_validate(
        {
            "gateway": {"id": "site-1"},
            "buses": {"p1": {"type": "dsmr-p1", "port": pty.gateway}},
            "meters": [{"id": "elec", "bus": "p1", "interval": INTERVAL_SECS}],
        }
    )
    astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
    health = Health()
    sent: dict[int, float] = {}  # telegram number -> wall-clock time its last byte was written

    async def meter_pushes(device: PtyDevice) -> None:
        k = 1
        while True:
            await device.write(numbered(k))
            sent[k] = time.time()
            k += 1
            await asyncio.sleep(PUSH_SECS)

    try:
        async with PtyDevice(pty.device) as device, open_readers(config, health=health) as readers:
            pushing = asyncio.create_task(meter_pushes(device))
            # the port opens at the first read; until a telegram has come there is none "at"
            # a boundary and the read waits for the next one (see drivers/serial_lines.py)
            await readers["elec"].read()
            poller = Poller(config.meters, dict[str, MeterReader](readers), astore, health)
            polling = asyncio.create_task(poller.run())
            await asyncio.sleep(7 * INTERVAL_SECS)
            for task in (polling, pushing):
                task.cancel()
            await asyncio.gather(polling, pushing, return_exceptions=True)
        stored = await astore.read("elec", 0)
    finally:
        await astore.aclose()
    stamps = [r.sample.ts_ms for r in stored]
    assert len(stamps) >= 5, stamps
    # exactly one sample per interval_secs: consecutive boundaries, none skipped, none doubled
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    assert steps == [INTERVAL_SECS * 1000] * (len(stamps) - 1)
    assert len({int(r.sample.values["power_active"]) for r in stored}) == len(stored)
    for record in stored:
        boundary = record.sample.ts_ms / 1000
        k = int(record.sample.values["power_active"])
        assert sent[k] <= boundary + SLACK_SECS, (k, "a telegram from after the boundary")
        if k + 1 in sent:  # the next one was not yet complete at the boundary
            assert sent[k + 1] >= boundary - SLACK_SECS, (k, "not the newest at the boundary")
    assert health.buses["p1"].transactions > len(stored)  # more telegrams came than were kept


async def test_an_sml_head_that_disappears_and_comes_back_is_read_again(pty: PtyPair) -> None:
    config = sml_config(
        pty.gateway, max_telegram_age_secs=0.3, timeout_secs=0.3, reconnect_max_secs=0.2
    )
    health = Health()
    async with open_readers(config, health=health) as readers:
        ehz = readers["ehz"]
        async with PtyDevice(pty.device) as head:
            reading = asyncio.create_task(ehz.read())
            await asyncio.sleep(0.1)
            await head.write(typical())
            assert await reading == TYPICAL_VALUES
        await pty.stop()  # the USB IR head is unplugged
        await asyncio.sleep(0.4)
        with pytest.raises(MeterReadError) as caught:
            await ehz.read()
        assert caught.value.kind in ("connection", "stale")
        await pty.start()  # ...and plugged in again, under the same name
        async with PtyDevice(pty.device) as head:

            async def push_and_read() -> dict[str, float]:
                await head.write(typical(power=321))
                return await ehz.read()

            values = await eventually(
                push_and_read,
                timeout=3,
                interval=0,
                retry_on=MeterReadError,
                what="the port to be re-opened",
            )
    assert values == TYPICAL_VALUES | {"power_active": 321.0}
    assert health.buses["ir"].reconnects >= 1


async def test_a_failed_baud_switch_is_followed_by_readouts_at_the_sign_on_rate(
    pty: PtyPair,
) -> None:
    """Mode C: the meter acknowledges 9600 baud and then says nothing. The next readouts ask
    it to stay at 300 baud (ACK 0 0 0) and succeed; after `fast_retry_after` of them the fast
    rate is tried again."""
    async with (
        PtyDevice(pty.device) as device,
        open_readers(d0_config(pty.gateway, timeout_secs=0.3)) as readers,
    ):
        reader = readers["main"]
        assert isinstance(reader, Iec62056Reader)
        reader.line.fast_retry_after = 2
        meter = D0Meter(
            device,
            D0_IDENTIFICATION,
            D0_BLOCK,
            reaction_secs=MIN_REACTION_SECS,
            gateway_baudrate=lambda: rate_of(reader),
            switch_fails=True,
        )
        async with meter.running():
            with pytest.raises(MeterReadError) as caught:
                await reader.read()
            assert caught.value.kind == "timeout"
            assert await reader.read() == D0_VALUES
            assert reader.last_readout is not None and reader.last_readout.baudrate == 300
            assert await reader.read() == D0_VALUES
            with pytest.raises(MeterReadError):  # two slow readouts done: fast again, fails
                await reader.read()
            assert await reader.read() == D0_VALUES  # and falls back once more
    fast, slow = b"\x06050\r\n", b"\x06000\r\n"  # ACK 0 Z 0: Z 5 = 9600, Z 0 = 300
    assert meter.acks == [fast, slow, slow, fast, slow]
    # every data block the meter sent went to a port set to the rate it was sent at
    assert [rate for step, rate in meter.rates if step == "data"] == [300, 300, 300]
    assert meter.readouts == 3
