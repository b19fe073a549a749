"""Malformed Modbus answers: whatever a device (or something pretending to be one) sends, a read
ends in values or in our MeterReadError, within its timeout, counted in the bus's health.

Two levels. Registers: every built-in map's plan decoded from arbitrary register words (what a
confused meter holds) gives finite values or a `garbage` error. Wire: a raw TCP server answers
each request with bytes drawn by hypothesis, from pure noise to a valid answer with one thing
wrong (transaction id, unit, function, length, byte count, cut short, padded), over Modbus TCP
and over RTU-over-TCP; the reader must neither crash nor hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import time
from collections.abc import AsyncIterator, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU

from drivers.base import MeterReadError
from drivers.modbus.bus import ModbusBus
from drivers.modbus.decode import decode_blocks
from drivers.modbus.planner import plan_map
from drivers.modbus.reader import ModbusReader
from drivers.modbus.register_map import RegisterMap, builtin_models, load_builtin
from drivers.modbus.transports import ModbusRtuOverTcpBus, ModbusTcpBus

MAPS: dict[str, RegisterMap] = {model: load_builtin(model) for model in builtin_models()}
#: The kinds a read failure may have (drivers.modbus.bus): anything else is a new, unknown path.
KINDS = {"timeout", "connection", "exception", "crc", "short_frame", "garbage"}
TIMEOUT_S = 0.05
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Each wire example waits out timeouts: fewer of them keep the file under a few seconds.
WIRE_FUZZ = settings(FUZZ, max_examples=15)


@FUZZ
@given(st.sampled_from(sorted(MAPS)), st.data())
def test_any_register_contents_decode_to_finite_values_or_a_garbage_error(
    model: str, data: st.DataObject
) -> None:
    plan = plan_map(MAPS[model])
    blocks = []
    for request in plan:
        count = request.count + data.draw(st.sampled_from([0, 0, 0, 0, -1, 1]), label="skew")
        words = data.draw(
            st.lists(st.integers(0, 0xFFFF), min_size=max(0, count), max_size=max(0, count))
        )
        blocks.append((request, words))
    try:
        values = decode_blocks(blocks)
    except MeterReadError as exc:
        assert exc.kind == "garbage"
    else:
        assert all(math.isfinite(v) for v in values.values())


# -- on the wire ------------------------------------------------------------------------------

Mutator = Callable[[bytes, bytes], bytes]


def _tcp_answer(request: bytes, registers: bytes) -> bytes:
    """A valid Modbus TCP answer to `request` carrying `registers`."""
    pdu = bytes([request[7], len(registers)]) + registers
    return request[:4] + struct.pack(">HB", len(pdu) + 1, request[6]) + pdu


def _rtu_answer(request: bytes, registers: bytes) -> bytes:
    frame = bytes([request[0], request[1], len(registers)]) + registers
    return frame + FramerRTU.compute_CRC(frame).to_bytes(2, "big")


def mutations(answer: bytes) -> st.SearchStrategy[bytes]:
    """Noise, or the valid answer with one thing wrong."""
    size = len(answer)
    return st.one_of(
        st.binary(max_size=300),  # noise
        st.integers(0, max(0, size - 1)).map(lambda n: answer[:n]),  # cut short
        st.binary(min_size=1, max_size=50).map(lambda extra: answer + extra),  # padded
        st.tuples(st.integers(0, max(0, size - 1)), st.integers(1, 255)).map(
            lambda flip: (
                answer[: flip[0]] + bytes([answer[flip[0]] ^ flip[1]]) + answer[flip[0] + 1 :]
            )
        ),  # one byte changed (tid, unit, function, length, byte count, data or CRC)
        st.just(answer + answer),  # answered twice
    )


@contextlib.asynccontextmanager
async def scripted_device(
    answer: Callable[[bytes], bytes], request_size: int
) -> AsyncIterator[int]:
    """A TCP server answering each `request_size`-byte request with answer(request)."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                request = await reader.readexactly(request_size)
                reply = answer(request)
                if reply:
                    writer.write(reply)
                    await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def _read_through(
    framing: str, replies: list[bytes | None]
) -> tuple[ModbusBus, list[object]]:
    """Read a small meter once per reply; None in `replies` means the valid answer."""
    register_map = RegisterMap.model_validate(
        {
            "model": "fuzz",
            "registers": [
                {"channel": "power_active", "address": 0, "table": "input", "type": "f32"},
                {"channel": "voltage_l1", "address": 2, "table": "input", "type": "f32"},
            ],
        }
    )
    registers = struct.pack(">ff", 1234.5, 230.25)
    pending = list(replies)

    def answer(request: bytes) -> bytes:
        valid = (
            _tcp_answer(request, registers) if framing == "tcp" else _rtu_answer(request, registers)
        )
        reply = pending.pop(0) if pending else None
        return valid if reply is None else reply

    outcomes: list[object] = []
    async with scripted_device(answer, 12 if framing == "tcp" else 8) as port:
        options = {
            "timeout_secs": TIMEOUT_S,
            "reconnect_max_secs": 0.01,
            "reconnect_initial_secs": 0.01,
        }
        bus: ModbusBus = (
            ModbusTcpBus("fuzz", "127.0.0.1", port, **options)
            if framing == "tcp"
            else ModbusRtuOverTcpBus("fuzz", "127.0.0.1", port, **options)
        )
        async with bus:
            reader = ModbusReader("fuzz", bus, 1, register_map)
            for _ in replies:
                started = time.monotonic()
                try:
                    outcomes.append(await reader.read())
                except MeterReadError as exc:
                    outcomes.append(exc)
                assert time.monotonic() - started < 5 * TIMEOUT_S + 0.5, "a read hung"
                await asyncio.sleep(0.011)  # past the reconnect backoff
    return bus, outcomes


@WIRE_FUZZ
@given(st.sampled_from(["tcp", "rtu"]), st.data())
def test_malformed_answers_fail_the_read_with_a_counted_error_never_a_crash(
    framing: str, data: st.DataObject
) -> None:
    template = (
        _tcp_answer(bytes(12), struct.pack(">ff", 1234.5, 230.25))
        if framing == "tcp"
        else _rtu_answer(bytes([1, 4, 0, 0, 0, 4, 0, 0]), struct.pack(">ff", 1234.5, 230.25))
    )
    replies: list[bytes | None] = data.draw(
        st.lists(st.one_of(st.none(), mutations(template)), min_size=1, max_size=3)
    )
    bus, outcomes = asyncio.run(_read_through(framing, replies))
    failures = [o for o in outcomes if isinstance(o, MeterReadError)]
    for outcome in outcomes:
        if isinstance(outcome, MeterReadError):
            assert outcome.kind in KINDS, outcome
        else:
            assert isinstance(outcome, dict)
            assert all(math.isfinite(v) for v in outcome.values())
    # Every failed read was counted in the bus's health (a read stops at its first failure).
    assert sum(bus.health.errors.values()) >= len(failures)
