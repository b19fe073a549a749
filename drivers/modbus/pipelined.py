"""Modbus TCP with several transactions outstanding on one connection (`max_in_flight` > 1).

Why: a serial-to-Ethernet gateway or a multi-unit device that queues requests answers the next
one while we are still decoding the last; waiting for each answer before sending the next
spends the round trip N times. pymodbus' client runs one transaction at a time (its
transaction manager holds a lock), so this bus speaks MBAP itself: read functions 3 and 4 only,
what meters need.

Invariants:
- One TCP connection per bus, as with every bus. At most `max_in_flight` meters hold a turn at
  once (a semaphore instead of the line lock); each meter's requests still run back to back in
  its turn, so its values come from one moment.
- An answer is matched to its request by the MBAP transaction id (and must carry the unit and
  function asked for); one nobody waits for (answered after its timeout) is counted and
  dropped. A lost connection fails every transaction waiting on it with `connection`.
- Errors become MeterReadError kinds as on every bus (timeout | connection | exception |
  garbage), counted in BusHealth; reconnecting backs off like the other buses.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Unpack

from core.health import BusState
from drivers.base import MeterReadError
from drivers.modbus.bus import (
    _FUNCTION_CODES,
    MAX_SILENT_TRANSACTIONS,
    BusOptions,
    BusTurn,
)
from drivers.modbus.transports import ModbusTcpBus

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">HHHB")  # transaction id, protocol 0, length, unit
_REQUEST = struct.Struct(">HHHBBHH")


class MbapConnection:
    """One Modbus TCP connection with transactions matched by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._waiting: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._next_tid = 0
        self.closed = False
        #: Answers that arrived for no waiting transaction (after their timeout).
        self.unmatched = 0
        self._receiver = asyncio.get_running_loop().create_task(self._receive(), name="mbap-rx")

    @classmethod
    async def open(cls, host: str, port: int, timeout: float) -> MbapConnection:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(
        self, unit: int, function: int, address: int, count: int, timeout: float
    ) -> bytes:
        """Send one read and return the answer's PDU; TimeoutError, ConnectionError."""
        if self.closed:
            raise ConnectionError("connection closed")
        self._next_tid = self._next_tid % 0xFFFF + 1
        tid = self._next_tid
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._waiting[tid] = future
        try:
            self._writer.write(_REQUEST.pack(tid, 0, 6, unit, function, address, count))
            async with asyncio.timeout(timeout):
                answered_unit, pdu = await future
        finally:
            self._waiting.pop(tid, None)
        if answered_unit != unit or not pdu or pdu[0] & 0x7F != function:
            raise ValueError(f"answer for unit {answered_unit} function {pdu[:1].hex()}")
        return pdu

    async def _receive(self) -> None:
        error: BaseException = ConnectionError("connection closed by the device")
        try:
            while True:
                header = await self._reader.readexactly(_HEADER.size)
                tid, _, length, unit = _HEADER.unpack(header)
                pdu = await self._reader.readexactly(max(0, length - 1))
                future = self._waiting.get(tid)
                if future is None or future.done():
                    self.unmatched += 1
                    continue
                future.set_result((unit, pdu))
        except (asyncio.IncompleteReadError, OSError) as exc:
            error = ConnectionError(str(exc) or type(exc).__name__)
        finally:
            self.closed = True
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(error)

    def close(self) -> None:
        self.closed = True
        self._receiver.cancel()
        self._writer.close()


class PipelinedTcpBus(ModbusTcpBus):
    """A Modbus TCP endpoint taking up to `max_in_flight` transactions at once."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int = 502,
        *,
        max_in_flight: int,
        timeout_secs: float = 3.0,
        **options: Unpack[BusOptions],
    ) -> None:
        super().__init__(name, host, port, timeout_secs=timeout_secs, **options)
        self.max_in_flight = max_in_flight
        self._slots = asyncio.Semaphore(max_in_flight)
        self._connection: MbapConnection | None = None
        self._connecting = asyncio.Lock()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[BusTurn]:
        """A turn for one meter; up to `max_in_flight` meters hold one at once."""
        async with self._slots:
            yield BusTurn(self)

    async def aclose(self) -> None:
        self._closed = True
        self._drop()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self._silent = 0
        if connection is not None:
            connection.close()

    async def _connected(self) -> MbapConnection:
        async with self._connecting:
            if self._closed:
                raise MeterReadError("connection", f"bus {self.name} is closed")
            if self._connection is not None and not self._connection.closed:
                return self._connection
            self._drop()
            wait = self._next_attempt - time.monotonic()
            if wait > 0:
                raise MeterReadError(
                    "connection", f"{self.describe()} unreachable; next attempt in {wait:.1f} s"
                )
            try:
                connection = await MbapConnection.open(self.host, self.port, self.timeout_secs)
            except (OSError, TimeoutError) as exc:
                self._next_attempt = time.monotonic() + self._reconnect.next_delay()
                message = f"cannot connect to {self.describe()} ({exc or 'timeout'})"
                if self.health.state is not BusState.OFFLINE:
                    log.warning("bus %s: %s; retrying with backoff", self.name, message)
                    self.health.state = BusState.OFFLINE
                raise self._count(MeterReadError("connection", message)) from None
            self._reconnect.reset()
            self._next_attempt = 0.0
            if self._ever_connected:
                self.health.reconnects += 1
            if self.health.state is BusState.OFFLINE:
                log.info("bus %s: connected to %s again", self.name, self.describe())
            self._ever_connected = True
            self.health.state = BusState.OK
            self._connection = connection
            return connection

    async def _transaction(
        self, unit: int, table: str, address: int, count: int, timeout: float | None
    ) -> list[int]:
        function = _FUNCTION_CODES.get(table)
        if function is None:
            raise ValueError(f"unknown register table {table!r}")
        connection = await self._connected()
        limit = self.timeout_secs if timeout is None else timeout
        where = f"{self.describe()} unit {unit} {table} {address}+{count}"
        self.health.transactions += 1
        started = time.monotonic()
        try:
            pdu = await connection.request(unit, function, address, count, limit)
        except TimeoutError:
            self._silent += 1
            if self._silent >= MAX_SILENT_TRANSACTIONS:
                log.warning(
                    "bus %s: %d transactions unanswered, reconnecting", self.name, self._silent
                )
                self._drop()
            raise self._count(
                MeterReadError("timeout", f"{where}: no answer within {limit:g} s")
            ) from None
        except (ConnectionError, OSError) as exc:
            self._drop()
            raise self._count(MeterReadError("connection", f"{where}: {exc}")) from None
        except ValueError as exc:
            raise self._count(MeterReadError("garbage", f"{where}: {exc}")) from None
        finally:
            self.health.busy_s += time.monotonic() - started
        self._silent = 0
        if pdu[0] & 0x80:
            code = pdu[1] if len(pdu) > 1 else 0
            raise self._refused(where, code, table, address, count)
        if len(pdu) != 2 + 2 * count or pdu[1] != 2 * count:
            raise self._count(MeterReadError("garbage", f"{where}: answered {len(pdu)} bytes"))
        return list(struct.unpack(f">{count}H", pdu[2:]))
