"""IEC 62056-21 (D0): the sign-on / identification / acknowledgement / readout exchange with a
simulated meter on a pty pair (a pty has no baud rate, so the meter checks the exchange and,
through the test, the rate the gateway's port is set to at each step)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.health import Health
from drivers.base import MeterReadError
from drivers.factory import build_bus, open_readers
from drivers.serial.iec62056 import (
    Iec62056Line,
    Iec62056Reader,
    parse_data_message,
    parse_identification,
)
from gateway.config.schema import Config
from tests.fakes.serial_meters import D0Meter, PtyDevice, data_message
from tests.fakes.telegrams import D0_BLOCK, D0_IDENTIFICATION, D0_VALUES
from tests.fixtures.socat import PtyPair

#: The standard's shortest reaction time: a meter answers no sooner after our message.
MIN_REACTION_SECS = 0.2


def d0_config(port: str, meters: list[dict[str, Any]] | None = None, **bus: Any) -> Config:
    options = {"timeout_secs": 0.3, "readout_timeout_secs": 2.0, **bus}
    return Config.model_validate(
        {
            "gateway": {"id": "site-1"},
            "buses": {"d0": {"type": "iec62056-21", "port": port, **options}},
            "meters": meters or [{"id": "main", "bus": "d0"}],
        }
    )


@pytest.fixture
async def pty(tmp_path: Path) -> AsyncIterator[PtyPair]:
    async with PtyPair(tmp_path) as pair:
        yield pair


@pytest.fixture
async def device(pty: PtyPair) -> AsyncIterator[PtyDevice]:
    async with PtyDevice(pty.device) as end:
        yield end


def rate_of(reader: Iec62056Reader) -> int:
    link = reader.line.port._link
    return link.baudrate if link is not None else 0


async def test_mode_c_switches_to_the_meters_rate_after_acknowledging_it(
    pty: PtyPair, device: PtyDevice
) -> None:
    health = Health()
    async with open_readers(d0_config(pty.gateway), health=health) as readers:
        reader = readers["main"]
        assert isinstance(reader, Iec62056Reader)
        meter = D0Meter(
            device,
            D0_IDENTIFICATION,
            D0_BLOCK,
            reaction_secs=MIN_REACTION_SECS,
            gateway_baudrate=lambda: rate_of(reader),
        )
        async with meter.running():
            assert await reader.read() == D0_VALUES
            assert await reader.read() == D0_VALUES  # the next readout signs on at 300 again
    assert meter.sign_ons == [b"/?!\r\n", b"/?!\r\n"]
    assert meter.acks == [b"\x06050\r\n", b"\x06050\r\n"]  # ACK, normal protocol, 9600, readout
    assert meter.rates == [("sign-on", 300), ("data", 9600)] * 2
    assert reader.last_readout is not None and reader.last_readout.baudrate == 9600
    assert str(reader.last_readout.identification) == D0_IDENTIFICATION.decode().strip()
    assert health.buses["d0"].transactions == 2 and not health.buses["d0"].errors


async def test_max_baudrate_caps_the_rate_the_gateway_acknowledges(
    pty: PtyPair, device: PtyDevice
) -> None:
    async with open_readers(d0_config(pty.gateway, max_baudrate=2400)) as readers:
        reader = readers["main"]
        assert isinstance(reader, Iec62056Reader)
        meter = D0Meter(
            device,
            D0_IDENTIFICATION,
            D0_BLOCK,
            reaction_secs=MIN_REACTION_SECS,
            gateway_baudrate=lambda: rate_of(reader),
        )
        async with meter.running():
            assert await reader.read() == D0_VALUES
    assert meter.acks == [b"\x06030\r\n"]
    assert meter.rates == [("sign-on", 300), ("data", 2400)]


@pytest.mark.parametrize(
    ("identification", "rate"),
    [
        (b"/ABCE MODE B METER\r\n", 9600),  # mode B: the meter switches without being asked
        (b"/XYZ@MODE A METER\r\n", 300),  # mode A: no switch at all
    ],
)
async def test_mode_a_and_b_meters_are_read_without_acknowledgement(
    pty: PtyPair, device: PtyDevice, identification: bytes, rate: int
) -> None:
    async with open_readers(d0_config(pty.gateway)) as readers:
        reader = readers["main"]
        assert isinstance(reader, Iec62056Reader)
        meter = D0Meter(device, identification, D0_BLOCK, gateway_baudrate=lambda: rate_of(reader))
        async with meter.running():
            assert await reader.read() == D0_VALUES
    assert meter.acks == []
    assert meter.rates == [("sign-on", 300), ("data", rate)]


async def test_meters_sharing_a_line_are_addressed_one_by_one(
    pty: PtyPair, device: PtyDevice
) -> None:
    meters = [
        {"id": "here", "bus": "d0", "address": "12345678"},
        {"id": "absent", "bus": "d0", "address": "99"},
    ]
    health = Health()
    async with open_readers(d0_config(pty.gateway, meters), health=health) as readers:
        meter = D0Meter(device, D0_IDENTIFICATION, D0_BLOCK, address="12345678")
        async with meter.running():
            assert await readers["here"].read() == D0_VALUES
            started = time.monotonic()
            with pytest.raises(MeterReadError) as caught:
                await readers["absent"].read()
            assert caught.value.kind == "timeout"
            assert time.monotonic() - started < 1.0  # two silences of timeout_secs at most
            assert await readers["here"].read() == D0_VALUES
    assert meter.sign_ons == [b"/?12345678!\r\n", b"/?99!\r\n", b"/?12345678!\r\n"]
    assert health.buses["d0"].errors["timeout"] == 1


async def test_a_bcc_error_yields_no_value_and_the_exchange_is_broken_off(
    pty: PtyPair, device: PtyDevice
) -> None:
    health = Health()
    async with open_readers(d0_config(pty.gateway), health=health) as readers:
        meter = D0Meter(device, D0_IDENTIFICATION, D0_BLOCK, corrupt_bcc=True)
        async with meter.running():
            with pytest.raises(MeterReadError) as caught:
                await readers["main"].read()
            assert caught.value.kind == "bcc"
            meter.corrupt_bcc = False
            assert await readers["main"].read() == D0_VALUES
    assert meter.breaks == 1  # the failed exchange ended with a break message
    assert health.buses["d0"].errors == {"bcc": 1}


async def test_a_readout_broken_off_midway_is_a_bounded_timeout(
    pty: PtyPair, device: PtyDevice
) -> None:
    async with open_readers(d0_config(pty.gateway)) as readers:
        meter = D0Meter(device, D0_IDENTIFICATION, D0_BLOCK, cut_after=120)
        async with meter.running():
            started = time.monotonic()
            with pytest.raises(MeterReadError) as caught:
                await readers["main"].read()
            assert caught.value.kind == "timeout"
            assert time.monotonic() - started < 1.0
            meter.cut_after = None
            assert await readers["main"].read() == D0_VALUES


async def test_a_readout_cancelled_from_outside_does_not_spoil_the_next(
    pty: PtyPair, device: PtyDevice
) -> None:
    async with open_readers(d0_config(pty.gateway)) as readers:
        meter = D0Meter(device, D0_IDENTIFICATION, D0_BLOCK, piece_pause_secs=0.02)
        async with meter.running():
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):  # the poller's guard, mid-readout
                    await readers["main"].read()
            meter.piece_pause_secs = 0.0
            # the rest of the broken-off readout is still arriving: it is let pass first
            assert await readers["main"].read() == D0_VALUES
    assert len(meter.sign_ons) == 2


async def test_an_rs485_adapter_that_echoes_our_requests_is_understood(
    pty: PtyPair, device: PtyDevice
) -> None:
    async with open_readers(d0_config(pty.gateway)) as readers:
        meter = D0Meter(device, D0_IDENTIFICATION, D0_BLOCK, echo=True)
        async with meter.running():
            assert await readers["main"].read() == D0_VALUES


async def test_a_vanished_optical_head_is_opened_again_when_it_returns(pty: PtyPair) -> None:
    health = Health()
    config = d0_config(pty.gateway, reconnect_max_secs=0.1)
    async with open_readers(config, health=health) as readers:
        async with (
            PtyDevice(pty.device) as device,
            D0Meter(device, D0_IDENTIFICATION, D0_BLOCK).running(),
        ):
            assert await readers["main"].read() == D0_VALUES
        await pty.stop()
        with pytest.raises(MeterReadError) as caught:
            await readers["main"].read()
        assert caught.value.kind == "connection"
        await pty.start()
        async with (
            PtyDevice(pty.device) as device,
            D0Meter(device, D0_IDENTIFICATION, D0_BLOCK).running(),
        ):
            await asyncio.sleep(0.15)  # past the reconnect backoff
            assert await readers["main"].read() == D0_VALUES
    assert health.buses["d0"].reconnects == 1


async def test_a_missing_port_fails_at_once(tmp_path: Path) -> None:
    async with open_readers(d0_config(str(tmp_path / "ttyUSB3"))) as readers:
        with pytest.raises(MeterReadError) as caught:
            await readers["main"].read()
    assert caught.value.kind == "connection"


def test_historical_and_non_numeric_values_never_become_readings() -> None:
    readings, lines = parse_data_message(data_message(D0_BLOCK))
    assert "1-0:1.8.0" in readings and readings["1-0:1.8.0"].unit == "kWh"
    assert readings["1-0:1.8.0"].value == Decimal("12345.678")
    assert "1-0:F.F.0" not in readings
    assert len(lines) == D0_BLOCK.count("\r\n")
    assert "1-0:1.6.0" in readings  # the max demand, not its time stamp


def test_obis_lines_with_medium_channel_and_f_group() -> None:
    readings, _ = parse_data_message(
        data_message("1-0:1.8.0*255(001234.567*kWh)\r\n1-0:2.8.0*01(000001.000*kWh)\r\n")
    )
    assert {code: (q.value, q.unit) for code, q in readings.items()} == {
        "1-0:1.8.0": (Decimal("1234.567"), "kWh")
    }


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_but_our_error(data: bytes) -> None:
    for candidate in (data, b"\x02" + data + b"\x03\x00"):
        with contextlib.suppress(MeterReadError):
            parse_data_message(candidate)
    with contextlib.suppress(MeterReadError):
        parse_identification(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_changed_byte_is_always_caught_by_the_bcc(data: st.DataObject) -> None:
    message = bytearray(data_message(D0_BLOCK))
    position = data.draw(st.integers(0, len(message) - 1))
    message[position] = data.draw(st.integers(0, 255).filter(lambda b: b != message[position]))
    with pytest.raises(MeterReadError):
        parse_data_message(bytes(message))


def test_the_line_is_built_from_config() -> None:
    config = d0_config("/dev/ttyUSB0", max_baudrate=4800, parity="E", bytesize=7)
    line = build_bus("d0", config.buses["d0"])
    assert isinstance(line, Iec62056Line)
    assert line.sign_on_baudrate == 300 and line.max_baudrate == 4800
    assert "iec62056-21" in line.describe() and "/dev/ttyUSB0 300 7E1" in line.describe()
