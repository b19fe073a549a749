"""Meters that answer garbage, half frames or nothing: counted, while the others stay on time.

Each broken meter sits on a bus of its own (a raw TCP server speaking just enough Modbus to be
wrong), next to a healthy simulated SDM630 on another bus. The broken ones are retried on every
boundary (offline_retry_secs = their interval_secs: the worst case for the event loop). The healthy
meter must still get a sample on every 200 ms boundary, with no gap, and each broken meter's
failures must be counted under a kind that tells the installer what is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.health import Health, MeterState
from drivers.simulator import serve_modbus_tcp
from gateway.config.schema import Config
from gateway.daemon import DB_FILE, Daemon
from tests.faults.conftest import long_form, sdm630_meters, stored_stamps
from tests.helpers.eventually import eventually

INTERVAL_MS = 200
RUN_S = 15.0 if long_form() else 3.0
#: A Modbus TCP read request: MBAP header (7 bytes) + function, address, count (5 bytes).
REQUEST_BYTES = 12


def _answer(mode: str, request: bytes, rng: random.Random) -> bytes:
    tid, unit, function = request[0:2], request[6], request[7]
    count = int.from_bytes(request[10:12], "big")
    pdu = bytes([function, 2 * count]) + rng.randbytes(2 * count)
    frame = tid + b"\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + bytes([unit]) + pdu
    if mode == "half":
        return frame[: len(frame) // 2]  # then nothing: the rest never comes
    # garbage: noise, or a well-framed answer whose byte count lies about its registers
    if rng.random() < 0.5:
        return rng.randbytes(rng.randint(1, 40))
    lying = bytes([function, rng.choice([0, 1, 2 * count + 2, 255])]) + rng.randbytes(2 * count)
    return tid + b"\x00\x00" + (len(lying) + 1).to_bytes(2, "big") + bytes([unit]) + lying


@contextlib.asynccontextmanager
async def broken_meter(mode: str, seed: int) -> AsyncIterator[int]:
    """A TCP 'meter' answering every read in `mode` (garbage | half | silent); yields its port."""
    rng = random.Random(seed)
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                request = await reader.readexactly(REQUEST_BYTES)
                if mode != "silent":
                    writer.write(_answer(mode, request, rng))
                    await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


def _config(data_dir: Path, ports: dict[str, int]) -> Config:
    return Config.model_validate(
        {
            "gateway": {
                "id": "faults",
                "timezone": "UTC",
                "data_dir": str(data_dir),
                "clock_check": "none",  # this box's clock may not be NTP-synced
            },
            "buses": {
                name: {
                    "type": "modbus-tcp",
                    "host": "127.0.0.1",
                    "port": port,
                    "timeout_secs": 0.15,
                }
                for name, port in ports.items()
            },
            "meters": [
                {
                    "id": name,
                    "bus": name,
                    "unit": 1,
                    "model": "sdm630",
                    "interval": f"{INTERVAL_MS}ms",
                    "offline_retry_secs": f"{INTERVAL_MS}ms",
                    "offline_retry_max_secs": f"{INTERVAL_MS}ms",
                }
                for name in ports
            ],
        }
    )


@pytest.mark.timeout(60 if long_form() else 20)
async def test_garbage_half_frames_and_silence_are_counted_while_a_good_meter_stays_on_time(
    tmp_path: Path, fault_seed: int
) -> None:
    health = Health()
    async with (
        serve_modbus_tcp(sdm630_meters(1)) as good,
        broken_meter("garbage", fault_seed) as garbage,
        broken_meter("half", fault_seed) as half,
        broken_meter("silent", fault_seed) as silent,
    ):
        ports = {"good": good.port, "garbage": garbage, "half": half, "silent": silent}
        daemon = Daemon(_config(tmp_path, ports), health=health)
        task = asyncio.get_running_loop().create_task(daemon.run(), name="daemon")
        try:
            await eventually(
                lambda: health.meter("good").reads > 0,
                timeout=10,
                interval=0.02,
                what="the first good read",
            )
            await asyncio.sleep(RUN_S)
            assert not task.done()
        finally:
            daemon.stop()
            async with asyncio.timeout(10):
                await task

    stamps = stored_stamps(tmp_path / DB_FILE)
    assert set(stamps) == {"good"}  # nothing from a broken meter was ever stored
    good_stamps = stamps["good"]
    assert len(good_stamps) >= RUN_S * 1000 / INTERVAL_MS
    gaps = [(a, b) for a, b in itertools.pairwise(good_stamps) if b - a != INTERVAL_MS]
    assert gaps == [], f"the good meter missed boundaries: {gaps}"
    assert health.meter("good").skipped_ticks == 0
    attempts = RUN_S * 1000 / INTERVAL_MS / 2  # each broken meter was tried on most boundaries
    expected = {
        "garbage": {"garbage", "short_frame"},
        "half": {"short_frame"},
        "silent": {"timeout"},
    }
    for name, kinds in expected.items():
        meter = health.meter(name)
        assert meter.state is MeterState.OFFLINE
        assert meter.reads == 0
        assert sum(meter.errors.values()) >= attempts, (name, meter.errors)
        assert set(meter.errors) - {"connection"} <= kinds, (name, meter.errors)
        assert set(meter.errors) & kinds, (name, meter.errors)
