"""A Modbus bus: one physical line or TCP endpoint, the one connection its meters share, their
turns on it, and what its failures are called. drivers.modbus.transports says how each kind of
bus connects; drivers.modbus.reader runs a meter's read plan on one.

Invariants:
- A bus owns at most one pymodbus client (one TCP connection / one open serial port), shared by
  every meter on it, and runs one transaction at a time (an asyncio.Lock). A meter's requests
  run back to back under that lock (`exclusive()`), so its values come from one moment. Buses
  share nothing, so they run in parallel.
- On an RTU line the next request waits for the inter-frame gap (3.5 character times) after the
  previous answer or timeout, whichever meter it was for. The line is paced to its baud rate
  where the OS does not (a USB adapter buffers what we write): a transaction's timeout starts
  once its request and answer can have crossed the wire, and after a timeout the next request
  waits until an answer would have ended, so frames never run together.
- Nothing connects at construction: the first read does, so `check-config` never touches
  hardware. A lost connection or vanished serial port is re-opened by a later read, never
  sooner than a core.backoff.Backoff delay after the last failed attempt (reconnect_initial_secs
  doubling to reconnect_max_secs, not jittered: the line is this gateway's alone; reset by a
  successful connect). No background task, nothing to restart.
- An answer must answer the request: its function code ours, no bytes after its registers
  (pymodbus accepts both); else it is `garbage`.
- Every pymodbus failure becomes MeterReadError(kind) here and nowhere else, kind being
  timeout | connection | exception | crc | short_frame | garbage, and is counted in the bus's
  BusHealth. pymodbus drops a frame with a bad CRC or one cut short silently and waits; the bytes
  it saw (via its packet trace) tell such a "timeout" apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import termios
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Final, TypedDict

from pymodbus.client import ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from core.backoff import Backoff, no_jitter
from core.cancel import raise_if_cancelling
from core.health import BusHealth, BusState
from drivers.base import AsyncClosable, MeterReadError

log = logging.getLogger(__name__)

#: After this many transactions in a row without an answer, the connection is dropped and
#: re-opened: a half-open TCP connection otherwise times out forever.
MAX_SILENT_TRANSACTIONS: Final = 3
DEFAULT_RECONNECT_INITIAL_SECS: Final = 0.5
DEFAULT_RECONNECT_MAX_SECS: Final = 60.0

#: What a failed connect may raise besides pymodbus' "not connected": socket and serial errors,
#: and termios.error (not an OSError) from a port that refuses its baud rate or parity.
CONNECT_ERRORS: Final = (OSError, ModbusException, termios.error)

_FUNCTION_CODES: Final[dict[str, int]] = {"holding": 3, "input": 4}
_EXCEPTION_NAMES: Final[dict[int, str]] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusExceptionError(MeterReadError):
    """The device answered with a Modbus exception code (kind "exception")."""

    def __init__(self, message: str, *, code: int, table: str, address: int, count: int) -> None:
        super().__init__("exception", message)
        self.code = code
        self.table = table
        self.address = address
        self.count = count


@dataclass
class _Received:
    """Bytes pymodbus handed its framer since the last request (for telling faults apart)."""

    data: bytearray = field(default_factory=bytearray)
    last: bytes = b""

    def reset(self) -> None:
        self.data.clear()
        self.last = b""

    def add(self, buffer: bytes) -> None:
        # pymodbus passes its whole receive buffer each time: what it has not consumed yet
        # plus the new bytes. Keep only what is new.
        if self.last and buffer.startswith(self.last):
            self.data += buffer[len(self.last) :]
        else:
            self.data += buffer
        self.last = bytes(buffer)


class BusTurn:
    """The line, held by one meter for a few transactions (see `ModbusBus.exclusive`)."""

    def __init__(self, bus: ModbusBus) -> None:
        self._bus = bus

    async def read(
        self, unit: int, table: str, address: int, count: int, *, timeout: float | None = None
    ) -> list[int]:
        """One read transaction; raises MeterReadError (ModbusExceptionError for exceptions)."""
        return await self._bus._transaction(unit, table, address, count, timeout)


class BusOptions(TypedDict, total=False):
    """What every bus takes besides its address and timing (defaults: `ModbusBus.__init__`)."""

    reconnect_max_secs: float
    reconnect_initial_secs: float
    health: BusHealth | None


class ClientOptions(TypedDict):
    """The keyword arguments a bus gives every pymodbus client it builds."""

    timeout: float
    retries: int
    reconnect_delay: float
    name: str
    trace_packet: Callable[[bool, bytes], bytes]


class ModbusBus(AsyncClosable):
    """One Modbus line or endpoint. `async with`-able; closing twice is harmless."""

    #: "rtu" (CRC-checked frames, serial timing) or "socket" (MBAP header over TCP).
    framing: ClassVar[str] = "socket"
    #: Re-open after MAX_SILENT_TRANSACTIONS unanswered in a row (a half-open TCP connection
    #: looks like that; a serial port does not get better by re-opening it).
    reconnect_on_silence: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        *,
        timeout_secs: float,
        inter_frame_gap_secs: float = 0.0,
        reconnect_max_secs: float = DEFAULT_RECONNECT_MAX_SECS,
        reconnect_initial_secs: float = DEFAULT_RECONNECT_INITIAL_SECS,
        health: BusHealth | None = None,
    ) -> None:
        self.name = name
        self.timeout_secs = timeout_secs
        self.reconnect_max_secs = reconnect_max_secs
        self.inter_frame_gap_secs = inter_frame_gap_secs
        self.health = health if health is not None else BusHealth(name)
        self._reconnect = Backoff(reconnect_initial_secs, reconnect_max_secs, rng=no_jitter)
        self._next_attempt = 0.0
        self._lock = asyncio.Lock()
        self._client: ModbusBaseClient | None = None
        self._silent = 0
        self._closed = False
        self._ever_connected = False
        self._line_free_at = 0.0
        self._received = _Received()
        #: Seconds one character takes on the wire (RTU lines; 0: not paced, e.g. TCP).
        self.char_secs = 0.0

    @property
    def transactions(self) -> int:
        """Transactions sent (answered or not) since the bus was created."""
        return self.health.transactions

    @abstractmethod
    def _new_client(self) -> ModbusBaseClient:
        """A fresh, unconnected pymodbus client for this line, built with `_client_options()`."""

    @abstractmethod
    def describe(self) -> str:
        """Where this bus goes, for messages (never contains secrets)."""

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[BusTurn]:
        """Hold the line for several transactions of one meter (others wait their turn)."""
        async with self._lock:
            yield BusTurn(self)

    async def read_registers(
        self, unit: int, table: str, address: int, count: int, *, timeout: float | None = None
    ) -> list[int]:
        """One read transaction; raises MeterReadError."""
        (words,) = await self.read_many(unit, [(table, address, count)], timeout=timeout)
        return words

    async def read_many(
        self,
        unit: int,
        requests: Sequence[tuple[str, int, int]],
        *,
        timeout: float | None = None,
    ) -> list[list[int]]:
        """Several (table, address, count) reads of one unit, back to back under the bus lock.

        `timeout` bounds each transaction (default: the bus timeout); waiting for the lock
        while another meter is read does not count.
        """
        async with self.exclusive() as turn:
            return [
                await turn.read(unit, table, address, count, timeout=timeout)
                for table, address, count in requests
            ]

    async def aclose(self) -> None:
        self._closed = True
        self._drop_client()

    def _client_options(self) -> ClientOptions:
        """What every pymodbus client of a bus is built with: the bus timeout, no retries and no
        reconnecting of its own (both are the bus's, without background tasks), the packet
        trace that tells faults apart."""
        return {
            # pymodbus' own bound leaves ours (the timeout plus the largest read's wire time).
            "timeout": self.timeout_secs + (13 + 2 * 125) * self.char_secs,
            "retries": 0,
            "reconnect_delay": 0,
            "name": f"bus-{self.name}",
            "trace_packet": self._trace_packet,
        }

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus calls this for every frame sent and every receive buffer it decodes."""
        if sending:
            self._received.reset()
        else:
            self._received.add(data)
        return data

    async def _connected_client(self) -> ModbusBaseClient:
        if self._closed:
            raise MeterReadError("connection", f"bus {self.name} is closed")
        if self._client is not None and self._client.connected:
            return self._client
        self._drop_client()
        wait = self._next_attempt - time.monotonic()
        if wait > 0:
            raise MeterReadError(
                "connection", f"{self.describe()} unreachable; next attempt in {wait:.1f} s"
            )
        client = self._new_client()
        try:
            connected = await client.connect()
        except CONNECT_ERRORS as exc:
            # termios.error is not an OSError: a port refusing its line settings raises it
            connected = False
            log.debug("bus %s: connect failed: %s", self.name, exc)
            release_leaked_ports(exc)
            del exc  # its frames hold what the failed open built; nothing may keep them
        except BaseException:  # cancelled mid-connect: leave no half-open transport behind
            client.close()
            raise
        if connected:
            try:
                raise_if_cancelling()  # pymodbus' wait_for may have lost our cancel (3.11)
            except asyncio.CancelledError:
                client.close()
                raise
        if not connected:
            client.close()
            self._next_attempt = time.monotonic() + self._reconnect.next_delay()
            message = f"cannot connect to {self.describe()}"
            if self.health.state is not BusState.OFFLINE:
                log.warning("bus %s: %s; retrying with backoff", self.name, message)
                self.health.state = BusState.OFFLINE
            raise self._count(MeterReadError("connection", message))
        self._client = client
        self._reconnect.reset()
        self._next_attempt = 0.0
        self._silent = 0
        if self._ever_connected:
            self.health.reconnects += 1
        if self.health.state is BusState.OFFLINE:
            log.info("bus %s: connected to %s again", self.name, self.describe())
        self._ever_connected = True
        self.health.state = BusState.OK
        return client

    async def _transaction(
        self, unit: int, table: str, address: int, count: int, timeout: float | None
    ) -> list[int]:
        if not self._lock.locked():
            raise RuntimeError("a transaction needs the line: use `async with bus.exclusive()`")
        if table not in _FUNCTION_CODES:
            raise ValueError(f"unknown register table {table!r}")
        client = await self._connected_client()
        # Request (8 bytes) and the answer (5 + 2 per register) at the line's baud rate.
        wire = (13 + 2 * count) * self.char_secs
        limit = (self.timeout_secs if timeout is None else timeout) + wire
        where = f"{self.describe()} unit {unit} {table} {address}+{count}"
        call = client.read_input_registers if table == "input" else client.read_holding_registers
        quiet = self._line_free_at - time.monotonic()
        if quiet > 0:
            await asyncio.sleep(quiet)
        self._received.reset()
        self.health.transactions += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                response: ModbusPDU = await call(address, count=count, device_id=unit)
        except TimeoutError:
            raise self._no_answer(
                client, f"{where}: no answer within {limit:g} s", unit, table, count
            ) from None
        except ConnectionException as exc:
            self._drop_client()
            raise self._count(MeterReadError("connection", f"{where}: {exc}")) from None
        except ModbusIOException as exc:
            # pymodbus' own timeout (and its "closing connection" after repeated silence)
            raise self._no_answer(client, f"{where}: {exc}", unit, table, count) from None
        except ModbusException as exc:
            raise self._count(MeterReadError("garbage", f"{where}: {exc}")) from None
        except (OSError, termios.error) as exc:  # termios.error: the port's driver refused
            self._drop_client()
            raise self._count(MeterReadError("connection", f"{where}: {exc}")) from None
        finally:
            ended = time.monotonic()
            self.health.busy_s += ended - started
            self._line_free_at = max(ended, started + wire) + self.inter_frame_gap_secs
        self._silent = 0
        raise_if_cancelling()  # pymodbus' wait_for may have lost our cancel (3.11)
        if isinstance(response, ExceptionResponse) or response.isError():
            code = int(getattr(response, "exception_code", 0))
            raise self._refused(where, code, table, address, count)
        words = list(getattr(response, "registers", []))
        if len(words) != count:
            raise self._count(
                MeterReadError("garbage", f"{where}: answered {len(words)} registers")
            )
        problem = self._mismatch(response, table, count)
        if problem is not None:
            raise self._count(MeterReadError("garbage", f"{where}: {problem}"))
        return words

    def _mismatch(self, response: ModbusPDU, table: str, count: int) -> str | None:
        """Why a decoded answer does not answer our request, if it does not: pymodbus matches
        answers by transaction id alone and decodes what the function code byte says, and it
        ignores bytes after the registers (which the MBAP length may cover)."""
        expected = _FUNCTION_CODES[table]
        function = int(getattr(response, "function_code", expected))
        if function != expected:
            return f"answer with function {function} to a function {expected} request"
        size = (5 if self.framing == "rtu" else 9) + 2 * count
        received = len(self._received.data)
        if received > size:
            return f"frame of {received} bytes where {size} answer the request (trailing bytes)"
        return None

    def _no_answer(
        self, client: ModbusBaseClient, message: str, unit: int, table: str, count: int
    ) -> MeterReadError:
        if not client.connected:
            self._drop_client()
            return self._count(MeterReadError("connection", f"{message} (connection lost)"))
        kind, detail = classify_silence(
            self.framing, bytes(self._received.data), unit, _FUNCTION_CODES[table], count
        )
        if kind != "timeout":
            # Something answered: the line and the unit are alive, only the frame was bad.
            return self._count(MeterReadError(kind, f"{message}: {detail}"))
        self._silent += 1
        if self.reconnect_on_silence and self._silent >= MAX_SILENT_TRANSACTIONS:
            log.warning("bus %s: %d transactions unanswered, reconnecting", self.name, self._silent)
            self._drop_client()
        return self._count(MeterReadError("timeout", message))

    def _refused(
        self, where: str, code: int, table: str, address: int, count: int
    ) -> ModbusExceptionError:
        """The device answered Modbus exception `code` (counted; its name in the message)."""
        name = _EXCEPTION_NAMES.get(code, "unknown exception")
        message = f"{where}: exception {code} ({name})"
        error = ModbusExceptionError(message, code=code, table=table, address=address, count=count)
        self._count(error)
        return error

    def _count(self, error: MeterReadError) -> MeterReadError:
        self.health.errors[error.kind] += 1
        self.health.last_error = f"{error.kind}: {error}"
        return error

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._silent = 0
        if client is not None:
            client.close()


def release_leaked_ports(exc: BaseException) -> None:
    """Close any port object a failed open left behind in the frames of `exc`.

    pyserial closes its descriptor when its own open fails, but an error raised after it (a
    later line setting, in pymodbus' transport) leaves an open, exclusively locked port that
    only the traceback still references: every later open would then fail with "Could not
    exclusively lock port" until the garbage collector came by.
    """
    traceback = exc.__traceback__
    while traceback is not None:
        for value in traceback.tb_frame.f_locals.values():
            for candidate in (value, getattr(value, "sync_serial", None)):
                close = getattr(candidate, "close", None)
                if isinstance(candidate, io.RawIOBase) and close is not None:
                    with contextlib.suppress(Exception):
                        close()
        traceback = traceback.tb_next


def classify_silence(
    framing: str, received: bytes, unit: int, function_code: int, count: int
) -> tuple[str, str]:
    """Why no valid answer arrived: (kind, detail) from the bytes that did arrive, if any.

    RTU: a frame from our unit for our function that is shorter than its length says is a
    short frame; one long enough that pymodbus still refused failed its CRC; anything else
    is garbage on the line. TCP: a frame shorter than its MBAP length is a short frame.
    """
    if not received:
        return "timeout", "nothing received"
    size = len(received)
    if framing == "rtu":
        if (
            size >= 2
            and received[0] == unit
            and received[1] in (function_code, function_code | 0x80)
        ):
            expected = 5 if received[1] & 0x80 else 5 + 2 * count
            if size < expected:
                return "short_frame", f"frame cut short ({size} of {expected} bytes)"
            frame = received[:expected]
            crc = int.from_bytes(frame[-2:], "big")
            if not FramerRTU.check_CRC(frame[:-2], crc):
                return "crc", f"CRC check failed ({received.hex(' ')})"
        return "garbage", f"unexpected bytes {received[:32].hex(' ')}"
    if size < 7 or size < 6 + int.from_bytes(received[4:6], "big"):
        return "short_frame", f"frame cut short ({size} bytes: {received[:32].hex(' ')})"
    return "garbage", f"unexpected bytes {received[:32].hex(' ')}"
