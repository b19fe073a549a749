"""Serial transport on socat pty pairs: bounded reads, re-opening a port that vanished."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.health import BusState
from drivers.base import MeterReadError
from drivers.serial.transport import SerialLink, SerialPort, SerialSettings
from tests.fakes.serial_meters import PtyDevice, line_end
from tests.fixtures.socat import PtyPair


@pytest.fixture
async def pty(tmp_path: Path) -> AsyncIterator[PtyPair]:
    async with PtyPair(tmp_path) as pair:
        yield pair


def port_on(path: str, **options: float) -> SerialPort:
    return SerialPort(
        "line",
        SerialSettings(path, 9600),
        reconnect_initial_secs=options.get("initial", 0.05),
        reconnect_max_secs=options.get("max", 0.2),
    )


async def test_bytes_flow_both_ways_and_the_rest_stays_buffered(pty: PtyPair) -> None:
    port = port_on(pty.gateway)
    async with PtyDevice(pty.device) as device:
        link = await port.link()
        await link.write(b"/?!\r\n")
        assert await device.read_until(line_end) == b"/?!\r\n"
        await device.write(b"first\r\nsecond")
        assert (
            await link.read_until(
                lambda d: d.find(b"\r\n") + 2 if b"\r\n" in d else -1,
                timeout_secs=1,
                total_secs=1,
                limit=100,
            )
            == b"first\r\n"
        )
        assert await link.read(1) == b"second"
    await port.close()
    await port.close()  # safe twice


async def test_every_read_is_bounded_by_its_timeout(pty: PtyPair) -> None:
    port = port_on(pty.gateway)
    async with PtyDevice(pty.device) as device:
        link = await port.link()
        started = time.monotonic()
        with pytest.raises(MeterReadError) as caught:
            await link.read(0.2)
        assert caught.value.kind == "timeout"
        assert 0.2 <= time.monotonic() - started < 0.5

        async def chatter() -> None:  # bytes keep coming, the end never does
            for _ in range(30):
                await device.write(b"x")
                await asyncio.sleep(0.03)

        talking = asyncio.create_task(chatter())
        started = time.monotonic()
        with pytest.raises(MeterReadError) as caught:
            await link.read_until(lambda d: -1, timeout_secs=0.2, total_secs=0.3, limit=1000)
        assert caught.value.kind == "timeout"
        assert time.monotonic() - started < 0.5
        talking.cancel()
        await asyncio.gather(talking, return_exceptions=True)
    await port.close()


async def test_a_missing_port_fails_fast_and_is_retried_only_after_backoff(tmp_path: Path) -> None:
    port = port_on(str(tmp_path / "ttyUSB9"), initial=0.3, max=1.0)
    with pytest.raises(MeterReadError) as caught:
        await port.link()
    assert caught.value.kind == "connection"
    assert "ttyUSB9" in str(caught.value)
    assert port.health.state is BusState.OFFLINE
    with pytest.raises(MeterReadError, match="next attempt in"):
        await port.link()  # within the backoff: not tried again
    assert port.health.errors["connection"] == 1
    await asyncio.sleep(port.retry_in())
    with pytest.raises(MeterReadError):
        await port.link()
    assert port.health.errors["connection"] == 2
    assert port.retry_in() > 0.3  # doubled
    await port.close()


async def test_a_port_that_disappears_and_comes_back_is_reopened(pty: PtyPair) -> None:
    port = port_on(pty.gateway)
    device = PtyDevice(pty.device)
    await device.__aenter__()
    link = await port.link()
    await pty.stop()  # adapter unplugged: socat ends, its links vanish
    device.close()
    with pytest.raises(MeterReadError) as caught:
        await link.read(1.0)
    assert caught.value.kind == "connection"
    await port.drop(str(caught.value))
    with pytest.raises(MeterReadError):
        await port.wait_link()  # still gone
    await pty.start()  # plugged in again: same link names, new ptys
    link = await port.wait_link()
    assert port.health.state is BusState.OK
    assert port.health.reconnects == 1
    async with PtyDevice(pty.device) as device:
        await device.write(b"hello")
        assert await link.read(1.0) == b"hello"
    await port.close()


async def test_the_baud_rate_can_be_switched_on_an_open_port(pty: PtyPair) -> None:
    link = await SerialLink.open(SerialSettings(pty.gateway, 300, 7, "E"))
    try:
        assert link.baudrate == 300
        link.set_baudrate(9600)
        assert link.baudrate == 9600
    finally:
        await link.close()
        await link.close()
    with pytest.raises(MeterReadError) as caught:
        await link.read(0.1)
    assert caught.value.kind == "connection"


async def test_a_port_held_by_another_process_is_a_connection_error(pty: PtyPair) -> None:
    first = await SerialLink.open(SerialSettings(pty.gateway, 9600))
    try:
        with pytest.raises(MeterReadError) as caught:
            await SerialLink.open(SerialSettings(pty.gateway, 9600))
        assert caught.value.kind == "connection"
    finally:
        await first.close()
