"""Modbus buses (one per physical line or TCP endpoint) and the reader that runs a meter's plan.

Invariants:
- A bus owns at most one pymodbus client (one TCP connection / one open serial port), shared by
  every meter on it, and runs one transaction at a time (an asyncio.Lock). A meter's requests
  run back to back under that lock, so its values come from one moment.
- Nothing connects at construction: the first read does, so `check-config` never touches
  hardware. A lost connection is re-opened by a later read, with capped exponential backoff
  between failed attempts (no background task, nothing to restart).
- Every pymodbus failure becomes MeterReadError(kind) here and nowhere else, kind being
  timeout | connection | exception | garbage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import Final, Self

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from drivers.base import MeterReadError
from drivers.decode import decode_block
from drivers.planner import ReadRequest, plan_map
from drivers.register_map import RegisterMap

log = logging.getLogger(__name__)

#: After this many transactions in a row without an answer, the connection is dropped and
#: re-opened: a half-open TCP connection otherwise times out forever.
MAX_SILENT_TRANSACTIONS: Final = 3
DEFAULT_RECONNECT_INITIAL_SECS: Final = 0.5

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


class ModbusBus(ABC):
    """One Modbus line or endpoint. `async with`-able; closing twice is harmless."""

    def __init__(
        self,
        name: str,
        *,
        timeout_secs: float,
        reconnect_max_secs: float,
        reconnect_initial_secs: float = DEFAULT_RECONNECT_INITIAL_SECS,
    ) -> None:
        self.name = name
        self.timeout_secs = timeout_secs
        self.reconnect_max_secs = reconnect_max_secs
        self._initial_delay = min(reconnect_initial_secs, reconnect_max_secs)
        self._delay = self._initial_delay
        self._next_attempt = 0.0
        self._lock = asyncio.Lock()
        self._client: ModbusBaseClient | None = None
        self._silent = 0
        self._closed = False
        self._down = False
        #: Transactions sent (answered or not); the monitor may publish it.
        self.transactions = 0

    @abstractmethod
    def _new_client(self) -> ModbusBaseClient:
        """A fresh, unconnected pymodbus client for this line (no automatic reconnect)."""

    @abstractmethod
    def describe(self) -> str:
        """Where this bus goes, for messages (never contains secrets)."""

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
        async with self._lock:
            results = []
            for table, address, count in requests:
                client = await self._connected_client()
                results.append(
                    await self._transaction(
                        client,
                        unit=unit,
                        table=table,
                        address=address,
                        count=count,
                        timeout=timeout,
                    )
                )
            return results

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
            self._next_attempt = time.monotonic() + self._delay
            self._delay = min(self._delay * 2, self.reconnect_max_secs)
            self._mark_down(f"cannot connect to {self.describe()}")
            raise MeterReadError("connection", f"cannot connect to {self.describe()}")
        self._client = client
        self._delay = self._initial_delay
        self._next_attempt = 0.0
        self._silent = 0
        if self._down:
            self._down = False
            log.info("bus %s: connected to %s again", self.name, self.describe())
        return client

    async def _transaction(
        self,
        client: ModbusBaseClient,
        *,
        unit: int,
        table: str,
        address: int,
        count: int,
        timeout: float | None,
    ) -> list[int]:
        limit = self.timeout_secs if timeout is None else timeout
        where = f"{self.describe()} unit {unit} {table} {address}+{count}"
        if table == "input":
            call = client.read_input_registers
        elif table == "holding":
            call = client.read_holding_registers
        else:
            raise ValueError(f"unknown register table {table!r}")
        self.transactions += 1
        try:
            async with asyncio.timeout(limit):
                response: ModbusPDU = await call(address, count=count, device_id=unit)
        except TimeoutError:
            raise self._no_answer(client, f"{where}: no answer within {limit:g} s") from None
        except ConnectionException as exc:
            self._drop_client()
            raise MeterReadError("connection", f"{where}: {exc}") from None
        except ModbusIOException as exc:
            # pymodbus' own timeout (and its "closing connection" after repeated silence)
            raise self._no_answer(client, f"{where}: {exc}") from None
        except ModbusException as exc:
            raise MeterReadError("garbage", f"{where}: {exc}") from None
        except OSError as exc:
            self._drop_client()
            raise MeterReadError("connection", f"{where}: {exc}") from None
        self._silent = 0
        if isinstance(response, ExceptionResponse) or response.isError():
            code = getattr(response, "exception_code", 0)
            name = _EXCEPTION_NAMES.get(code, "unknown exception")
            raise MeterReadError("exception", f"{where}: exception {code} ({name})")
        words = list(getattr(response, "registers", []))
        if len(words) != count:
            raise MeterReadError("garbage", f"{where}: answered {len(words)} registers")
        return words

    def _no_answer(self, client: ModbusBaseClient, message: str) -> MeterReadError:
        if not client.connected:
            self._drop_client()
            return MeterReadError("connection", f"{message} (connection lost)")
        self._silent += 1
        if self._silent >= MAX_SILENT_TRANSACTIONS:
            log.warning("bus %s: %d transactions unanswered, reconnecting", self.name, self._silent)
            self._drop_client()
        return MeterReadError("timeout", message)

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._silent = 0
        if client is not None:
            client.close()

    def _mark_down(self, why: str) -> None:
        if not self._down:
            self._down = True
            log.warning("bus %s: %s; retrying with backoff", self.name, why)


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
    ) -> None:
        super().__init__(
            name,
            timeout_secs=timeout_secs,
            reconnect_max_secs=reconnect_max_secs,
            reconnect_initial_secs=reconnect_initial_secs,
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
        )


class ModbusRtuBus(ModbusBus):
    """One RS-485 line: one open serial port, the meters on it polled one at a time."""

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
    ) -> None:
        super().__init__(
            name,
            timeout_secs=timeout_secs,
            reconnect_max_secs=reconnect_max_secs,
            reconnect_initial_secs=reconnect_initial_secs,
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
        )


class ModbusReader:
    """Reads one meter (a unit on a bus) by its register map: satisfies drivers.base.MeterReader."""

    def __init__(
        self,
        meter_id: str,
        bus: ModbusBus,
        unit: int,
        register_map: RegisterMap,
        *,
        timeout_secs: float | None = None,
    ) -> None:
        self.meter_id = meter_id
        self.bus = bus
        self.unit = unit
        self.register_map = register_map
        self.timeout_secs = timeout_secs
        self.plan: list[ReadRequest] = plan_map(register_map)

    async def read(self) -> dict[str, float]:
        requests = [(r.table, r.address, r.count) for r in self.plan]
        blocks = await self.bus.read_many(self.unit, requests, timeout=self.timeout_secs)
        values: dict[str, float] = {}
        for request, words in zip(self.plan, blocks, strict=True):
            values.update(decode_block(request, words))
        return values


#: The name the issue asked for; the reader does not depend on the transport.
ModbusTcpReader = ModbusReader
