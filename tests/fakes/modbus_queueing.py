"""A Modbus TCP gateway that queues requests (what `max_in_flight` > 1 is for), serving the
registers of SimulatedMeters. pymodbus' own server handles one frame at a time per connection,
so it cannot stand in for one.

Strict, as fakes here are: it answers the requests that arrive together in REVERSE order (a
client that matched answers by arrival instead of by transaction id gets another unit's
values), answers an unknown unit with exception 11 (gateway target failed to respond), and
counts how many transactions it had outstanding at most on one connection.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence

from drivers.simulator import SimulatedMeter

_TABLES = {3: "holding", 4: "input"}


class QueueingGateway:
    def __init__(self, meters: Sequence[SimulatedMeter], *, hold_secs: float = 0.005) -> None:
        self.meters = {meter.unit_id: meter for meter in meters}
        #: How long it gathers requests before answering them (a busy RS-485 side).
        self.hold_secs = hold_secs
        self.port = 0
        self.connections = 0
        self.max_outstanding = 0
        self.answered = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> QueueingGateway:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            for writer in list(self._writers):
                writer.close()
            # Let each connection's handler see its end (no task is left to be cancelled).
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        pending: list[bytes] = []
        try:
            while True:
                pending.append(await reader.readexactly(12))
                # Gather what arrives together, then answer it last-first.
                while True:
                    try:
                        async with asyncio.timeout(self.hold_secs):
                            pending.append(await reader.readexactly(12))
                    except TimeoutError:
                        break
                self.max_outstanding = max(self.max_outstanding, len(pending))
                for frame in reversed(pending):
                    writer.write(self._answer(frame))
                    self.answered += 1
                pending.clear()
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._handlers.discard(task)
            writer.close()

    def _answer(self, frame: bytes) -> bytes:
        tid, _, _, unit, function, address, count = struct.unpack(">HHHBBHH", frame)
        meter = self.meters.get(unit)
        table = _TABLES.get(function)
        if meter is None or table is None:
            code = 11 if meter is None else 1
            return struct.pack(">HHHBBB", tid, 0, 3, unit, function | 0x80, code)
        words = meter.words(table, address, count)
        pdu = struct.pack(f">BB{count}H", function, 2 * count, *words)
        return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu
