"""Modbus buses (one per physical line or TCP endpoint) and the reader that runs a meter's plan.

Invariants:
- A bus owns at most one pymodbus client (one TCP connection / one open serial port), shared by
  every meter on it, and runs one transaction at a time (an asyncio.Lock). A meter's requests
  run back to back under that lock (`exclusive()`), so its values come from one moment. Buses
  share nothing, so they run in parallel.
- On an RTU line the next request waits for the inter-frame gap (3.5 character times) after the
  previous answer or timeout, whichever meter it was for.
- Nothing connects at construction: the first read does, so `check-config` never touches
  hardware. A lost connection or vanished serial port is re-opened by a later read, never
  sooner than a core.backoff.Backoff delay after the last failed attempt (reconnect_initial_secs
  doubling to reconnect_max_secs, not jittered: the line is this gateway's alone; reset by a
  successful connect). No background task, nothing to restart.
- Every pymodbus failure becomes MeterReadError(kind) here and nowhere else, kind being
  timeout | connection | exception | crc | short_frame | garbage, and is counted in the bus's
  BusHealth. pymodbus drops a frame with a bad CRC or one cut short silently and waits; the bytes
  it saw (via its packet trace) tell such a "timeout" apart.
- A reader learns which blocks its device refuses (exception 2, illegal data address), splits
  them and plans around them for the rest of the process's life (not persisted: a restart
  learns again with a few extra transactions).
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Final, Self

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from core.backoff import Backoff, no_jitter
from core.health import BusHealth, BusState
from drivers.base import MeterReadError
from drivers.modbus.decode import decode_blocks
from drivers.modbus.planner import ReadRequest, Span, plan_reads, request_for
from drivers.modbus.register_map import RegisterMap, RegisterSpec, scale_factor_channel

log = logging.getLogger(__name__)

#: After this many transactions in a row without an answer, the connection is dropped and
#: re-opened: a half-open TCP connection otherwise times out forever.
MAX_SILENT_TRANSACTIONS: Final = 3
DEFAULT_RECONNECT_INITIAL_SECS: Final = 0.5
ILLEGAL_DATA_ADDRESS: Final = 2
#: Above this rate the Modbus serial-line spec fixes the inter-frame gap at 1.75 ms.
_FIXED_GAP_ABOVE_BAUD: Final = 19200
_FIXED_GAP_SECS: Final = 0.00175

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


def character_bits(*, bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> int:
    """Bits on the wire per byte: start bit, data bits, parity bit if any, stop bits."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


def rtu_gap_secs(
    baudrate: int, *, bytesize: int = 8, parity: str = "N", stopbits: int = 1
) -> float:
    """The RTU inter-frame gap: 3.5 character times, fixed at 1.75 ms above 19200 baud."""
    if baudrate > _FIXED_GAP_ABOVE_BAUD:
        return _FIXED_GAP_SECS
    bits = character_bits(bytesize=bytesize, parity=parity, stopbits=stopbits)
    return 3.5 * bits / baudrate


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


class ModbusBus(ABC):
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
        reconnect_max_secs: float,
        reconnect_initial_secs: float = DEFAULT_RECONNECT_INITIAL_SECS,
        inter_frame_gap_secs: float = 0.0,
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

    @property
    def transactions(self) -> int:
        """Transactions sent (answered or not) since the bus was created."""
        return self.health.transactions

    @abstractmethod
    def _new_client(self) -> ModbusBaseClient:
        """A fresh, unconnected pymodbus client for this line (no automatic reconnect)."""

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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

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
        except (OSError, ModbusException) as exc:
            connected = False
            log.debug("bus %s: connect failed: %s", self.name, exc)
        except BaseException:  # cancelled mid-connect: leave no half-open transport behind
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
        limit = self.timeout_secs if timeout is None else timeout
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
        except OSError as exc:
            self._drop_client()
            raise self._count(MeterReadError("connection", f"{where}: {exc}")) from None
        finally:
            ended = time.monotonic()
            self.health.busy_s += ended - started
            self._line_free_at = ended + self.inter_frame_gap_secs
        self._silent = 0
        if isinstance(response, ExceptionResponse) or response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = _EXCEPTION_NAMES.get(code, "unknown exception")
            raise self._count(
                ModbusExceptionError(
                    f"{where}: exception {code} ({name})",
                    code=code,
                    table=table,
                    address=address,
                    count=count,
                )
            )
        words = list(getattr(response, "registers", []))
        if len(words) != count:
            raise self._count(
                MeterReadError("garbage", f"{where}: answered {len(words)} registers")
            )
        return words

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

    def _count(self, error: MeterReadError) -> MeterReadError:
        self.health.errors[error.kind] += 1
        self.health.last_error = f"{error.kind}: {error}"
        return error

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._silent = 0
        if client is not None:
            client.close()


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


class ModbusTcpBus(ModbusBus):
    """One TCP endpoint (a meter or a TCP/RTU gateway); one connection for all its units."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int = 502,
        *,
        timeout_secs: float = 3.0,
        reconnect_max_secs: float = 60.0,
        reconnect_initial_secs: float = DEFAULT_RECONNECT_INITIAL_SECS,
        health: BusHealth | None = None,
    ) -> None:
        super().__init__(
            name,
            timeout_secs=timeout_secs,
            reconnect_max_secs=reconnect_max_secs,
            reconnect_initial_secs=reconnect_initial_secs,
            health=health,
        )
        self.host = host
        self.port = port

    def describe(self) -> str:
        return f"modbus-tcp {self.host}:{self.port}"

    def _new_client(self) -> ModbusBaseClient:
        return AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.timeout_secs,
            retries=0,
            reconnect_delay=0,  # reconnecting is ours, without background tasks
            name=f"bus-{self.name}",
            trace_packet=self._trace_packet,
        )


class ModbusRtuOverTcpBus(ModbusBus):
    """A serial-to-Ethernet converter in transparent mode: RTU frames (with CRC) over TCP.

    The RS-485 line behind it still carries one transaction at a time; the converter paces the
    line itself, so no gap is enforced here unless configured.
    """

    framing = "rtu"

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        timeout_secs: float = 1.0,
        reconnect_max_secs: float = 60.0,
        reconnect_initial_secs: float = DEFAULT_RECONNECT_INITIAL_SECS,
        inter_frame_gap_secs: float = 0.0,
        health: BusHealth | None = None,
    ) -> None:
        super().__init__(
            name,
            timeout_secs=timeout_secs,
            reconnect_max_secs=reconnect_max_secs,
            reconnect_initial_secs=reconnect_initial_secs,
            inter_frame_gap_secs=inter_frame_gap_secs,
            health=health,
        )
        self.host = host
        self.port = port

    def describe(self) -> str:
        return f"modbus-rtu-over-tcp {self.host}:{self.port}"

    def _new_client(self) -> ModbusBaseClient:
        return AsyncModbusTcpClient(
            self.host,
            port=self.port,
            framer=FramerType.RTU,
            timeout=self.timeout_secs,
            retries=0,
            reconnect_delay=0,
            name=f"bus-{self.name}",
            trace_packet=self._trace_packet,
        )


class ModbusRtuBus(ModbusBus):
    """One RS-485 line: one open serial port, the meters on it polled one at a time.

    `port` may be a symlink such as /dev/serial/by-id/...: it is resolved at every (re)open,
    so an adapter that comes back under another ttyUSBn is found again.
    """

    framing = "rtu"
    reconnect_on_silence = False

    def __init__(
        self,
        name: str,
        port: str,
        *,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        timeout_secs: float = 1.0,
        reconnect_max_secs: float = 60.0,
        reconnect_initial_secs: float = DEFAULT_RECONNECT_INITIAL_SECS,
        inter_frame_gap_secs: float | None = None,
        health: BusHealth | None = None,
    ) -> None:
        gap = (
            rtu_gap_secs(baudrate, bytesize=bytesize, parity=parity, stopbits=stopbits)
            if inter_frame_gap_secs is None
            else inter_frame_gap_secs
        )
        super().__init__(
            name,
            timeout_secs=timeout_secs,
            reconnect_max_secs=reconnect_max_secs,
            reconnect_initial_secs=reconnect_initial_secs,
            inter_frame_gap_secs=gap,
            health=health,
        )
        self.port = port
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.bytesize = bytesize

    def describe(self) -> str:
        return f"modbus-rtu {self.port} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"

    def _new_client(self) -> ModbusBaseClient:
        return AsyncModbusSerialClient(
            self.port,
            framer=FramerType.RTU,
            baudrate=self.baudrate,
            parity=self.parity,
            stopbits=self.stopbits,
            bytesize=self.bytesize,
            timeout=self.timeout_secs,
            retries=0,
            reconnect_delay=0,
            name=f"bus-{self.name}",
            trace_packet=self._trace_packet,
        )


@dataclass
class Reading:
    """One complete read: channel values and the raw blocks they came from."""

    values: dict[str, float]
    blocks: list[tuple[ReadRequest, list[int]]]

    def words(self, register: RegisterSpec) -> list[int] | None:
        """The raw registers of `register` as read, or None if it was not read."""
        for request, words in self.blocks:
            if request.table == register.table and register in request.registers:
                offset = register.address - request.address
                return words[offset : offset + register.words]
        return None


#: Finds a device's register map by reading holding registers (address, count) -> words;
#: drivers.modbus.sunspec.discover_sunspec is one.
Discover = Callable[[Callable[[int, int], Awaitable[list[int]]]], Awaitable[RegisterMap]]


class ModbusReader:
    """Reads one meter (a unit on a bus) by its register map: satisfies drivers.base.MeterReader.

    The plan starts as the planner's minimum. When the device answers exception 2 (illegal data
    address) to a block, the block is halved and each half read (recursively) in the same turn,
    the refused span is remembered, and the plan is recomputed to avoid it. A register refused
    even alone is absent: an optional one is left out from then on; a required one fails the
    read with a message naming it (and is tried alone again at the next read).

    Without a map, `discover` finds it at the first read (SunSpec), in the same turn on the
    line; it is kept for the reader's life. A failed discovery fails that read only.
    """

    def __init__(
        self,
        meter_id: str,
        bus: ModbusBus,
        unit: int,
        register_map: RegisterMap | None = None,
        *,
        timeout_secs: float | None = None,
        discover: Discover | None = None,
    ) -> None:
        if register_map is None and discover is None:
            raise ValueError("a reader needs a register map or a way to discover one")
        self.meter_id = meter_id
        self.bus = bus
        self.unit = unit
        self.timeout_secs = timeout_secs
        self.discover = discover
        #: Spans this device answered exception 2 to, learnt while reading.
        self.refused: set[Span] = set()
        #: Optional channels the device does not have (left out of every read).
        self.absent: set[str] = set()
        self.register_map: RegisterMap | None = register_map
        self.plan: list[ReadRequest] = [] if register_map is None else self._make_plan()

    async def read(self) -> dict[str, float]:
        return (await self.read_detailed()).values

    async def read_detailed(self) -> Reading:
        """A read that also returns the raw registers (for `meter-gateway read --raw`)."""
        reading = Reading({}, [])
        learnt = len(self.refused), len(self.absent)
        try:
            async with self.bus.exclusive() as turn:
                if self.register_map is None:
                    await self._discover(turn)
                for request in self.plan:
                    await self._read_block(turn, request, reading)
        finally:
            if (len(self.refused), len(self.absent)) != learnt:
                before = len(self.plan)
                self.plan = self._make_plan()
                log.info(
                    "meter %s: read plan is now %d request(s) (was %d)",
                    self.meter_id,
                    len(self.plan),
                    before,
                )
        reading.values = decode_blocks(reading.blocks)
        return reading

    async def _discover(self, turn: BusTurn) -> None:
        assert self.discover is not None

        async def read_holding(address: int, count: int) -> list[int]:
            return await turn.read(self.unit, "holding", address, count, timeout=self.timeout_secs)

        self.register_map = await self.discover(read_holding)
        self.plan = self._make_plan()
        log.info(
            "meter %s: unit %d is %s; %d channel(s) in %d request(s)",
            self.meter_id,
            self.unit,
            self.register_map.description or self.register_map.model,
            len(self.register_map.registers),
            len(self.plan),
        )

    async def _read_block(self, turn: BusTurn, request: ReadRequest, reading: Reading) -> None:
        try:
            words = await turn.read(
                self.unit, request.table, request.address, request.count, timeout=self.timeout_secs
            )
        except ModbusExceptionError as exc:
            if exc.code != ILLEGAL_DATA_ADDRESS:
                raise
            await self._split(turn, request, reading, exc)
            return
        reading.blocks.append((request, words))

    async def _split(
        self, turn: BusTurn, request: ReadRequest, reading: Reading, exc: ModbusExceptionError
    ) -> None:
        self.refused.add(Span(request.table, request.address, request.end))
        members = request.registers
        if len(members) == 1:
            (register,) = members
            if register.optional:
                self.absent.add(register.channel)
                log.warning(
                    "meter %s: unit %d has no %s register %d (%s, optional): left out",
                    self.meter_id,
                    self.unit,
                    register.table,
                    register.address,
                    register.channel,
                )
                return
            raise MeterReadError(
                "exception",
                f"meter {self.meter_id}: unit {self.unit} refuses {register.table} register "
                f"{register.address} ({register.channel}, {register.type}) even alone: {exc}. "
                "Is the model right? A register the device may lack can be marked optional.",
            )
        log.info(
            "meter %s: unit %d refused %s %d+%d (illegal data address); reading it in parts",
            self.meter_id,
            self.unit,
            request.table,
            request.address,
            request.count,
        )
        half = len(members) // 2
        for part in (members[:half], members[half:]):
            await self._read_block(turn, request_for(request.table, part), reading)

    def _make_plan(self) -> list[ReadRequest]:
        """The fewest requests avoiding what the device refused; lone refused registers first.

        A value whose scale-factor register the device lacks is left out with it (such a
        factor is only optional when all its values are).
        """
        assert self.register_map is not None
        wanted = [
            r
            for r in self.register_map.registers_to_read()
            if r.channel not in self.absent
            and (
                r.scale_register is None
                or scale_factor_channel(r.scale_register) not in self.absent
            )
        ]
        refused_alone = [r for r in wanted if Span(r.table, r.address, r.end) in self.refused]
        rest = [r for r in wanted if r not in refused_alone]
        plan = [request_for(r.table, [r]) for r in refused_alone]
        if rest:
            plan += plan_reads(
                rest,
                max_count=self.register_map.max_registers_per_request,
                max_gap=self.register_map.max_gap,
                forbidden=self.register_map.forbidden,
                unreadable=self.refused,
            )
        return plan


#: The name the issue asked for; the reader does not depend on the transport.
ModbusTcpReader = ModbusReader
