"""Reading one meter on a Modbus bus by its register map: plan, read, learn what it refuses.

Invariants:
- Every read runs the whole plan in one turn on the line (`ModbusBus.exclusive`), so a meter's
  values come from one moment.
- A reader learns which blocks its device refuses (exception 2, illegal data address), splits
  them and plans around them for the rest of the process's life (not persisted: a restart
  learns again with a few extra transactions).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from drivers.base import MeterReadError
from drivers.modbus.bus import BusTurn, ModbusBus, ModbusExceptionError
from drivers.modbus.decode import decode_blocks
from drivers.modbus.planner import ReadRequest, Span, plan_reads, request_for
from drivers.modbus.register_map import RegisterMap, RegisterSpec, scale_factor_channel

log = logging.getLogger(__name__)

ILLEGAL_DATA_ADDRESS: Final = 2


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
        #: time.monotonic() when the last read got the line (its first request went out).
        self.turn_started_mono: float | None = None

    async def read(self) -> dict[str, float]:
        return (await self.read_detailed()).values

    async def read_detailed(self) -> Reading:
        """A read that also returns the raw registers (for `meter-gateway read --raw`)."""
        reading = Reading({}, [])
        learnt = len(self.refused), len(self.absent)
        try:
            async with self.bus.exclusive() as turn:
                # When the line became ours: on a shared line a read starts after the others.
                self.turn_started_mono = time.monotonic()
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
