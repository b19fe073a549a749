"""Serial utility-meter lines (D0, DSMR P1, SML) as the factory sees them, and the machinery
shared by meters that talk on their own (P1, SML).

A *line* owns one serial port and hands out one MeterReader per configured meter, like a
Modbus bus. Each bus type's builder is registered in drivers.registry by drivers.serial.config,
so the protocol modules are imported only when such a bus is configured (dsmr-parser alone
takes a noticeable moment to import on a Raspberry Pi).

Push lines (P1, SML) -- invariants:
- One background task per port (started by the first read, ended by `aclose()`) reads bytes,
  frames telegrams and keeps the newest complete, verified one. Readers never touch the port.
- A read at a poll boundary returns the newest telegram if it is at most `max_age_secs` old,
  so uplinks see the meter on the poller's cadence, not the meter's. With none that fresh it
  waits up to `wait_secs` for the next one, then fails: "connection" when the port cannot be
  opened, "stale" when it is open but no complete telegram came.
- A damaged telegram (CRC, cut short, garbage) is counted in the bus's health and skipped;
  the previous good telegram stays the newest. A value is never taken from a damaged one.
- After a read error or `max_age_secs` of silence the port is closed and opened again (with
  the transport's backoff), which also recovers a USB adapter that re-enumerated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol, TypedDict

from core.health import BusHealth
from drivers.base import AsyncClosable, MeterReader, MeterReadError
from drivers.registry import BuildOptions
from drivers.serial.obis_map import ObisMap, Quantity, meter_map
from drivers.serial.transport import SerialPort, port_for

if TYPE_CHECKING:
    from drivers.config import MeterConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MbusReading:
    """A DSMR M-Bus device's reading (gas, water, heat) with its own capture time."""

    channel: int
    quantity: Quantity
    #: When the device captured the value, UTC epoch ms (None: the telegram gives none).
    ts_ms: int | None
    #: EN 13757-3 device type from 0-n:24.1.0 (3 gas, 7 water, ...), when the telegram has it.
    device_type: int | None = None


@dataclass(frozen=True)
class Telegram:
    """One complete, verified telegram, decoded but not yet mapped to channels."""

    #: Normal OBIS code ("1-0:1.8.1") -> value with the unit the meter printed.
    readings: Mapping[str, Quantity]
    mbus: Mapping[int, MbusReading] = field(default_factory=dict)
    #: time.monotonic() when its last byte arrived.
    received: float = field(default_factory=time.monotonic)

    def age(self) -> float:
        return time.monotonic() - self.received


@dataclass(frozen=True)
class FrameProblem:
    """Bytes the framer had to throw away: kind "truncated" or "garbage", counted per bus."""

    kind: str
    message: str


class Framer(Protocol):
    def feed(self, data: bytes) -> list[bytes | FrameProblem]:
        """Complete frames found (in order) and problems met since the last call."""
        ...


class SerialLine(AsyncClosable):
    """One serial port and the meters on it; an async context manager safe to exit twice."""

    kind: ClassVar[str]

    def __init__(self, name: str, port: SerialPort) -> None:
        self.name = name
        self.port = port

    @property
    def health(self) -> BusHealth:
        return self.port.health

    def describe(self) -> str:
        return f"{self.kind} line {self.name} ({self.port.describe()})"

    @abstractmethod
    def reader(self, meter: MeterConfig) -> MeterReader:
        """The reader of one configured meter on this line."""

    async def aclose(self) -> None:
        await self.port.close()


class PushTiming(TypedDict):
    """How fresh a push line's telegram must be, and how long a read waits for one."""

    max_age_secs: float
    wait_secs: float


class _PushBusConfig(Protocol):
    port: str
    reconnect_max_secs: float
    max_telegram_age_secs: float
    timeout_secs: float

    def line_settings(self) -> tuple[int, int, str, int]: ...


class PushLine(SerialLine):
    """A meter that sends telegrams on its own; see the module docstring for the invariants."""

    @staticmethod
    def port_and_timing(
        name: str, bus: _PushBusConfig, options: BuildOptions
    ) -> tuple[SerialPort, PushTiming]:
        """A push bus config's port and timing, for a subclass's `from_config`."""
        timing = PushTiming(
            max_age_secs=bus.max_telegram_age_secs,
            wait_secs=options.get("timeout_secs") or bus.timeout_secs,
        )
        return port_for(name, bus, options.get("health")), timing

    def __init__(
        self,
        name: str,
        port: SerialPort,
        *,
        max_age_secs: float,
        wait_secs: float,
    ) -> None:
        super().__init__(name, port)
        self.max_age_secs = max_age_secs
        self.wait_secs = wait_secs
        self._latest: Telegram | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Why the port could not be opened last time (None: it is open or not tried yet).
        self._port_error: str | None = None
        self.telegrams = 0

    @abstractmethod
    def new_framer(self) -> Framer:
        """A framer with an empty buffer (a new one after every re-open)."""

    @abstractmethod
    def decode(self, frame: bytes) -> Telegram:
        """Verify and decode one frame; MeterReadError (kind crc, garbage, ...) when damaged."""

    @property
    def latest_telegram(self) -> Telegram | None:
        return self._latest

    def start(self) -> None:
        """Start reading the port (idempotent); the first read calls this."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._pump(), name=f"serial-{self.name}"
            )

    async def latest(self) -> Telegram:
        """The newest telegram at most `max_age_secs` old, waiting up to `wait_secs` for one."""
        if self._closed:
            raise MeterReadError("connection", f"{self.name}: bus is closed")
        self.start()
        deadline = time.monotonic() + self.wait_secs
        while True:
            telegram = self._latest
            if telegram is not None and telegram.age() <= self.max_age_secs:
                return telegram
            remaining = deadline - time.monotonic()
            if self._port_error is not None and not self.port.is_open:
                raise MeterReadError("connection", self._port_error)
            if remaining <= 0:
                break
            self._changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                pass
        if telegram is None:
            problem = f"; last problem: {self.health.last_error}" if self.health.last_error else ""
            raise MeterReadError(
                "stale",
                f"{self.name}: no complete telegram received yet ({self.describe()}){problem}",
            )
        problem = f"; last problem: {self.health.last_error}" if self.health.last_error else ""
        raise MeterReadError(
            "stale",
            f"{self.name}: newest complete telegram is {telegram.age():.0f}s old "
            f"(max_telegram_age_secs {self.max_age_secs:g}){problem}",
        )

    async def _pump(self) -> None:
        framer = self.new_framer()
        while True:
            try:
                link = await self.port.wait_link()
            except MeterReadError as exc:
                if self.port.closed:
                    return
                self._port_error = str(exc)
                self._changed.set()
                continue
            self._port_error = None
            try:
                data = await link.read(self.max_age_secs)
            except MeterReadError as exc:
                self.port.count(exc.kind, str(exc))
                await self.port.drop(f"{exc.kind}: {exc}")
                framer = self.new_framer()
                self._changed.set()
                continue
            for item in framer.feed(data):
                if isinstance(item, FrameProblem):
                    self.port.count(item.kind, item.message)
                    log.debug("%s: %s: %s", self.name, item.kind, item.message)
                    continue
                try:
                    telegram = self.decode(item)
                except MeterReadError as exc:
                    self.port.count(exc.kind, str(exc))
                    log.debug("%s: telegram dropped: %s: %s", self.name, exc.kind, exc)
                    continue
                self._latest = telegram
                self.telegrams += 1
                self.health.transactions += 1
                self._changed.set()

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # the task's own CancelledError stays inside it
        await super().aclose()


class ObisReader:
    """A meter whose values come from a push line's telegrams through the OBIS map."""

    def __init__(self, meter_id: str, line: PushLine, obis: ObisMap) -> None:
        self.meter_id = meter_id
        self.line = line
        self.obis = obis
        self._reported: set[str] = set()

    async def read(self) -> dict[str, float]:
        telegram = await self.line.latest()
        return map_values(self.meter_id, self.obis, telegram.readings, self._reported)


def map_values(
    meter_id: str, obis: ObisMap, readings: Mapping[str, Quantity], reported: set[str]
) -> dict[str, float]:
    """Canonical values of one reading; each new mapping problem is logged once per meter."""
    values, problems = obis.apply(readings)
    for problem in problems:
        if problem not in reported:
            reported.add(problem)
            log.warning("meter %s: left out %s", meter_id, problem)
    if not values:
        codes = ", ".join(sorted(readings)) or "none"
        raise MeterReadError(
            "garbage", f"no value maps to a channel (codes in the reading: {codes})"
        )
    return values


def obis_map_for(meter: MeterConfig) -> ObisMap:
    return meter_map(meter.obis_overrides())
