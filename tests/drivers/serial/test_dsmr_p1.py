"""DSMR P1: real telegrams from the standards, pushed by a simulated meter over a pty pair."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.health import Health
from drivers.base import MeterReader, MeterReadError
from drivers.factory import open_readers
from drivers.serial.dsmr_p1 import MbusReader, P1Framer, decode_telegram
from drivers.serial.lines import FrameProblem, ObisReader
from drivers.serial.obis_map import default_map
from drivers.stamped import StampedReader
from gateway.config.schema import Config
from gateway.poller import Poller
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from tests.fakes.serial_meters import PtyDevice
from tests.fakes.telegrams import (
    DSMR5_EXAMPLE_GAS,
    DSMR5_EXAMPLE_VALUES,
    DSMR22_EXAMPLE,
    DSMR42_KAIFA,
    EMUCS_EXAMPLE,
    EMUCS_MBUS_TS_MS,
    dsmr5_example,
)
from tests.fixtures.socat import PtyPair
from tests.helpers.eventually import eventually


def p1_config(port: str, **bus: Any) -> Config:
    return Config.model_validate(
        {
            "gateway": {"id": "site-1"},
            "buses": {"p1": {"type": "dsmr-p1", "port": port, **bus}},
            "meters": [
                {"id": "elec", "bus": "p1", "interval": 0.2},
                {"id": "gas", "bus": "p1", "mbus_channel": 1, "interval": 0.2},
            ],
        }
    )


@pytest.fixture
async def pty(tmp_path: Path) -> AsyncIterator[PtyPair]:
    async with PtyPair(tmp_path) as pair:
        yield pair


@pytest.fixture
async def meter(pty: PtyPair) -> AsyncIterator[PtyDevice]:
    async with PtyDevice(pty.device) as device:
        yield device


# --- decoding real telegrams ---------------------------------------------------------------


def test_the_dsmr5_example_telegram_reads_as_the_standard_says() -> None:
    telegram = decode_telegram(dsmr5_example(), "5")
    values, problems = default_map().apply(telegram.readings)
    assert values == DSMR5_EXAMPLE_VALUES
    assert problems == []
    gas = telegram.mbus[1]
    assert (float(gas.quantity.value), gas.ts_ms) == DSMR5_EXAMPLE_GAS
    assert gas.device_type == 3


def test_the_belgian_emucs_example_has_gas_and_water_with_their_capture_time() -> None:
    telegram = decode_telegram(EMUCS_EXAMPLE, "5B")
    values, _ = default_map().apply(telegram.readings)
    assert values["energy_active_import"] == 34.0 + 15_758.0
    assert values["energy_active_export_t2"] == 11.0
    assert values["voltage_l1"] == 234.7
    gas, water = telegram.mbus[1], telegram.mbus[2]
    assert (float(gas.quantity.value), gas.ts_ms, gas.device_type) == (
        112.384,
        EMUCS_MBUS_TS_MS,
        3,
    )
    assert (float(water.quantity.value), water.device_type) == (872.234, 7)


def test_a_dsmr42_telegram_from_a_kaifa_meter() -> None:
    telegram = decode_telegram(DSMR42_KAIFA, "4")
    values, _ = default_map().apply(telegram.readings)
    assert values["energy_active_import"] == 1_581_123.0 + 1_435_706.0
    assert values["power_active"] == 2027.0
    assert (values["power_active_l1"], values["power_active_l2"], values["power_active_l3"]) == (
        170.0,
        1247.0,
        209.0,
    )
    assert (values["current_l1"], values["current_l2"], values["current_l3"]) == (0.0, 6.0, 2.0)
    gas = telegram.mbus[1]
    # 2016-11-29 20:00 Dutch winter time is 19:00 UTC
    assert (float(gas.quantity.value), gas.ts_ms) == (981.443, 1_480_446_000_000)


def test_dsmr22_has_no_crc_and_a_two_line_gas_reading() -> None:
    telegram = decode_telegram(DSMR22_EXAMPLE, "2.2")
    values, _ = default_map().apply(telegram.readings)
    assert values["energy_active_import"] == 2002.0
    assert values["power_active"] == 1010.0
    gas = telegram.mbus[1]
    # 2016-11-07 19:00 Dutch winter time is 18:00 UTC
    assert (float(gas.quantity.value), gas.ts_ms) == (1.001, 1_478_541_600_000)


def test_a_changed_value_fails_the_crc_and_yields_nothing() -> None:
    good = dsmr5_example()
    bad = good.replace(b"1-0:1.8.1(123456.789", b"1-0:1.8.1(123456.780")
    with pytest.raises(MeterReadError) as caught:
        decode_telegram(bad, "5")
    assert caught.value.kind == "crc"


def test_a_dsmr5_telegram_without_its_crc_is_refused() -> None:
    stripped = dsmr5_example()[:-6] + b"\r\n"
    with pytest.raises(MeterReadError) as caught:
        decode_telegram(stripped, "5")
    assert caught.value.kind == "crc"


def test_a_garbled_line_in_a_telegram_without_crc_drops_the_telegram() -> None:
    garbled = DSMR22_EXAMPLE.replace(b"1-0:1.8.2(00001.001*kWh)", b"1-0:1.8.2(0000\x001.0")
    with pytest.raises(MeterReadError) as caught:
        decode_telegram(garbled, "2.2")
    assert caught.value.kind == "garbage"


def test_the_framer_resynchronises_and_counts_what_it_throws_away() -> None:
    framer = P1Framer()
    telegram = dsmr5_example()
    out: list[bytes | FrameProblem] = []
    stream = b"tail of a telegram\r\n!1234\r\n" + telegram[:400] + b"\x00\xffnoise" + telegram
    stream += b"garbage between\r\n" + telegram
    for i in range(0, len(stream), 7):  # a few bytes at a time, as a UART delivers them
        out += framer.feed(stream[i : i + 7])
    frames = [item for item in out if isinstance(item, bytes)]
    problems = [item.kind for item in out if isinstance(item, FrameProblem)]
    assert frames == [telegram, telegram]
    # the head joined mid-telegram (not an error), then one cut short, then garbage
    assert problems == ["truncated", "garbage"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.sampled_from(["2.2", "4", "5", "5B", "5L"]))
def test_random_bytes_never_raise_anything_but_our_error(data: bytes, version: str) -> None:
    for frame in P1Framer().feed(data):
        if isinstance(frame, bytes):
            with contextlib.suppress(MeterReadError):
                decode_telegram(frame, version)
    with contextlib.suppress(MeterReadError):
        decode_telegram(data, version)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_telegrams_give_the_right_values_or_our_error(data: st.DataObject) -> None:
    source = data.draw(st.sampled_from([(dsmr5_example(), "5"), (DSMR22_EXAMPLE, "2.2")]))
    raw, version = source
    position = data.draw(st.integers(0, len(raw) - 1))
    mutated = bytearray(raw)
    mutated[position] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[position]))
    try:
        telegram = decode_telegram(bytes(mutated), version)
    except MeterReadError:
        return
    values, _ = default_map().apply(telegram.readings)
    if version == "5":  # the CRC catches every single-byte change
        pytest.fail(f"a damaged telegram was accepted: {values}")


# --- a meter on a pty ---------------------------------------------------------------------


async def test_readers_return_the_newest_telegram_on_the_poll_cadence(
    pty: PtyPair, meter: PtyDevice
) -> None:
    health = Health()
    async with open_readers(p1_config(pty.gateway), health=health) as readers:
        elec, gas = readers["elec"], readers["gas"]
        assert isinstance(elec, ObisReader) and isinstance(gas, MbusReader)
        assert isinstance(gas, StampedReader) and not isinstance(elec, StampedReader)
        reading = asyncio.create_task(elec.read())  # starts the port reader, waits for one
        await asyncio.sleep(0.1)
        await meter.write(dsmr5_example())
        assert await reading == DSMR5_EXAMPLE_VALUES
        stamped = await gas.read_stamped()
        assert stamped.values == {"gas_volume": DSMR5_EXAMPLE_GAS[0]}
        assert stamped.ts_ms == DSMR5_EXAMPLE_GAS[1]
        bus = health.buses["p1"]
        assert bus.transactions == 1 and not bus.errors


async def test_damaged_telegrams_are_counted_and_never_replace_a_good_one(
    pty: PtyPair, meter: PtyDevice
) -> None:
    health = Health()
    async with open_readers(p1_config(pty.gateway), health=health) as readers:
        elec = readers["elec"]
        first = asyncio.create_task(elec.read())
        await asyncio.sleep(0.1)
        await meter.write(dsmr5_example())
        assert (await first)["power_active"] == 1193.0
        bad_crc = dsmr5_example().replace(b"01.193*kW", b"09.999*kW")
        cut_short = dsmr5_example(**{"01.193*kW": "02.000*kW"})[:300]
        newer = dsmr5_example(**{"01.193*kW": "03.500*kW"})
        await meter.write(bad_crc)
        await meter.write(b"\r\nline noise\r\n")
        await meter.write(cut_short, chunk=64, pause=0.01)
        await asyncio.sleep(0.1)
        assert (await elec.read())["power_active"] == 1193.0
        await meter.write(newer, chunk=100, pause=0.01)
        await asyncio.sleep(0.1)
        assert (await elec.read())["power_active"] == 3500.0
    bus = health.buses["p1"]
    assert dict(bus.errors) == {"crc": 1, "garbage": 1, "truncated": 1}
    assert bus.transactions == 2


async def test_a_meter_that_falls_silent_reads_stale(pty: PtyPair, meter: PtyDevice) -> None:
    config = p1_config(pty.gateway, max_telegram_age_secs=0.3, timeout_secs=0.2)
    async with open_readers(config) as readers:
        elec = readers["elec"]
        started = time.monotonic()
        with pytest.raises(MeterReadError) as caught:
            await elec.read()
        assert caught.value.kind == "stale"
        assert "no complete telegram" in str(caught.value)
        assert time.monotonic() - started < 0.5
        await meter.write(dsmr5_example())
        await asyncio.sleep(0.1)
        assert await elec.read() == DSMR5_EXAMPLE_VALUES
        await asyncio.sleep(0.35)
        with pytest.raises(MeterReadError) as caught:
            await elec.read()
        assert caught.value.kind == "stale"
        assert "old" in str(caught.value)


async def test_a_missing_port_is_a_connection_error_and_opening_touches_nothing(
    tmp_path: Path,
) -> None:
    config = p1_config(str(tmp_path / "ttyUSB0"), timeout_secs=2.0)
    async with open_readers(config) as readers:
        await asyncio.sleep(0.05)
        assert [t for t in asyncio.all_tasks() if t.get_name().startswith("serial-")] == []
        started = time.monotonic()
        with pytest.raises(MeterReadError) as caught:
            await readers["gas"].read()
        assert caught.value.kind == "connection"
        assert "ttyUSB0" in str(caught.value)
        assert time.monotonic() - started < 1.0  # no wait for a port that is not there


async def test_a_port_that_disappears_and_comes_back_is_read_again(pty: PtyPair) -> None:
    config = p1_config(
        pty.gateway, max_telegram_age_secs=0.3, timeout_secs=0.3, reconnect_max_secs=0.2
    )
    health = Health()
    async with open_readers(config, health=health) as readers:
        elec = readers["elec"]
        async with PtyDevice(pty.device) as device:
            reading = asyncio.create_task(elec.read())
            await asyncio.sleep(0.1)
            await device.write(dsmr5_example())
            assert (await reading)["power_active"] == 1193.0
        await pty.stop()  # the USB adapter is unplugged
        await asyncio.sleep(0.4)
        with pytest.raises(MeterReadError) as caught:
            await elec.read()
        assert caught.value.kind in ("connection", "stale")
        await pty.start()  # ...and plugged in again, under the same name
        async with PtyDevice(pty.device) as device:
            newer = dsmr5_example(**{"01.193*kW": "00.500*kW"})

            async def push_and_read() -> dict[str, float]:
                await device.write(newer)
                return await elec.read()

            values = await eventually(
                push_and_read,
                timeout=3,
                interval=0,
                retry_on=MeterReadError,
                what="the port to be re-opened",
            )
            assert values["power_active"] == 500.0
    assert health.buses["p1"].reconnects >= 1


async def test_the_poller_stamps_gas_with_the_telegram_time_and_stores_it_once(
    pty: PtyPair, meter: PtyDevice, tmp_path: Path
) -> None:
    config = p1_config(pty.gateway)
    astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
    health = Health()

    async def meter_pushes() -> None:
        while True:
            await meter.write(dsmr5_example())
            await asyncio.sleep(0.05)

    try:
        async with open_readers(config, health=health) as readers:
            pushing = asyncio.create_task(meter_pushes())
            poller = Poller(config.meters, dict[str, MeterReader](readers), astore, health)
            polling = asyncio.create_task(poller.run())
            await asyncio.sleep(1.0)
            for task in (polling, pushing):
                task.cancel()
            await asyncio.gather(polling, pushing, return_exceptions=True)
        gas = await astore.read("gas", 0)
        elec = await astore.read("elec", 0)
    finally:
        await astore.aclose()
    assert [(r.sample.ts_ms, dict(r.sample.values)) for r in gas] == [
        (DSMR5_EXAMPLE_GAS[1], {"gas_volume": DSMR5_EXAMPLE_GAS[0]})
    ]
    assert health.meter("gas").reads >= 3 and health.meter("gas").refused_older == 0
    assert len(elec) >= 3
    assert all(r.sample.ts_ms % 200 == 0 for r in elec)  # on the poll cadence
    assert all(dict(r.sample.values) == DSMR5_EXAMPLE_VALUES for r in elec)


async def test_a_water_meter_is_never_read_as_gas(pty: PtyPair, meter: PtyDevice) -> None:
    config = Config.model_validate(
        {
            "gateway": {"id": "site-1"},
            "buses": {"p1": {"type": "dsmr-p1", "port": pty.gateway, "dsmr_version": "5B"}},
            "meters": [
                {"id": "gas", "bus": "p1", "mbus_channel": 1},
                {"id": "water", "bus": "p1", "mbus_channel": 2, "medium": "water"},
                {"id": "wrong", "bus": "p1", "mbus_channel": 3},
                {"id": "mislabelled", "bus": "p1", "mbus_channel": 4, "medium": "gas"},
            ],
        }
    )
    emucs = EMUCS_EXAMPLE
    async with open_readers(config) as readers:
        reading = asyncio.create_task(readers["gas"].read())
        await asyncio.sleep(0.1)
        await meter.write(emucs)
        assert await reading == {"gas_volume": 112.384}
        assert await readers["water"].read() == {"water_volume": 872.234}
        with pytest.raises(MeterReadError) as caught:
            await readers["wrong"].read()
        assert caught.value.kind == "missing"
    swapped = Config.model_validate(
        {
            "gateway": {"id": "site-1"},
            "buses": {"p1": {"type": "dsmr-p1", "port": pty.gateway, "dsmr_version": "5B"}},
            "meters": [{"id": "gas", "bus": "p1", "mbus_channel": 2}],
        }
    )
    async with open_readers(swapped) as readers:
        reading = asyncio.create_task(readers["gas"].read())
        await asyncio.sleep(0.1)
        await meter.write(emucs)
        with pytest.raises(MeterReadError) as caught:
            await reading
        assert caught.value.kind == "config"
        assert "device type 7" in str(caught.value)
