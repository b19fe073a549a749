"""Split on exception 2: a device that refuses a merged block (it spans a hole the map does not
know) is read in parts, the reader plans around what it learnt, and a register the device
refuses even alone is left out (optional) or named in the error (required)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.base import MeterReadError
from drivers.modbus.planner import ReadRequest, Span, plan_reads
from drivers.modbus.reader import ModbusReader
from drivers.modbus.register_map import AddressRange, RegisterMap, RegisterSpec
from drivers.modbus.transports import ModbusTcpBus
from tests.drivers.modbus.test_planner import CHANNELS, Case, cases
from tests.fakes.modbus_device import SimulatedMeter, serve_modbus_tcp

# --- the planner with learnt refusals ----------------------------------------------------------


@st.composite
def cases_with_refusals(draw: st.DrawFn) -> tuple[Case, list[Span]]:
    """Refused spans look like what a reader learns: from one register's start to a later
    register's end, in one table (never a single register: those are left out of planning)."""
    case = draw(cases(max_registers=7))
    by_table: dict[str, list[RegisterSpec]] = {}
    for register in sorted(case.registers, key=lambda r: r.address):
        by_table.setdefault(register.table, []).append(register)
    spans = []
    for table, registers in by_table.items():
        if len(registers) < 2:
            continue
        for _ in range(draw(st.integers(0, 3))):
            i = draw(st.integers(0, len(registers) - 2))
            j = draw(st.integers(i + 1, len(registers) - 1))
            spans.append(Span(table, registers[i].address, registers[j].end))
    return case, spans


def _valid(request: ReadRequest, case: Case, refused: Sequence[Span]) -> bool:
    """Independent of the planner: limits, forbidden holes, refused spans, gap runs."""
    if not 0 < request.count <= case.max_count:
        return False
    start, end = request.address, request.end
    if any(h.overlaps(request.table, start, end) for h in case.forbidden):
        return False
    if any(s.table == request.table and start <= s.start and s.end <= end for s in refused):
        return False
    needed = {a for r in request.registers for a in range(r.address, r.end)}
    run = 0
    for address in range(start, end):
        run = 0 if address in needed else run + 1
        if run > case.max_gap:
            return False
    return True


def _fewest(case: Case, refused: Sequence[Span]) -> int:
    """Exhaustive breadth-first search over sets of valid requests (small inputs only)."""
    registers = case.registers
    everything = (1 << len(registers)) - 1
    candidates = set()
    for start in {r.address for r in registers}:
        for end in {r.end for r in registers}:
            for table in {r.table for r in registers}:
                inside = [
                    i
                    for i, r in enumerate(registers)
                    if r.table == table and start <= r.address and r.end <= end
                ]
                if not inside or end <= start:
                    continue
                request = ReadRequest(
                    table, start, end - start, tuple(registers[i] for i in inside)
                )
                if _valid(request, case, refused):
                    candidates.add(sum(1 << i for i in inside))
    depth = {0: 0}
    queue = deque([0])
    while queue:
        state = queue.popleft()
        if state == everything:
            return depth[state]
        for mask in candidates:
            if (following := state | mask) not in depth:
                depth[following] = depth[state] + 1
                queue.append(following)
    raise AssertionError("no cover at all")


@given(cases_with_refusals())
@settings(max_examples=300, deadline=None)
def test_a_plan_never_repeats_a_refused_block_and_stays_minimal(
    drawn: tuple[Case, list[Span]],
) -> None:
    case, refused = drawn
    plan = plan_reads(
        case.registers,
        max_count=case.max_count,
        max_gap=case.max_gap,
        forbidden=case.forbidden,
        unreadable=refused,
    )
    served = sorted((r for q in plan for r in q.registers), key=lambda r: r.channel)
    assert served == sorted(case.registers, key=lambda r: r.channel)
    for request in plan:
        assert _valid(request, case, refused), request
        assert all(request.address <= r.address and r.end <= request.end for r in request.registers)
    assert len(plan) == _fewest(case, refused)


# --- against a simulated device with holes the map does not know ------------------------------


def f32(channel: str, address: int, **extra: Any) -> dict[str, Any]:
    return {"channel": channel, "address": address, "table": "input", "type": "f32", **extra}


def maps(
    registers: list[dict[str, Any]], holes: list[tuple[int, int]], **options: Any
) -> tuple[RegisterMap, RegisterMap]:
    """(what the device is, what the gateway's map says): the same registers; only the device
    knows its holes (it answers exception 2 to any read touching one)."""
    forbidden = [{"table": "input", "first": a, "last": b} for a, b in holes]
    device = RegisterMap.model_validate(
        {
            "model": "device",
            "forbidden": forbidden,
            "registers": [
                r
                for r in registers
                if not any(
                    AddressRange.model_validate(h).overlaps("input", r["address"], r["address"] + 2)
                    for h in forbidden
                )
            ],
        }
    )
    gateway = RegisterMap.model_validate({"model": "map", "registers": registers, **options})
    return device, gateway


def tcp_bus(port: int) -> ModbusTcpBus:
    return ModbusTcpBus("plant", "127.0.0.1", port, timeout_secs=1.0)


async def test_a_block_spanning_a_hole_is_split_and_the_plan_learns_the_fewest_requests() -> None:
    registers = [f32("voltage_l1", 0), f32("voltage_l2", 4), f32("voltage_l3", 8)]
    registers.append(f32("frequency", 12))
    device_map, gateway_map = maps(registers, holes=[(6, 7)], max_gap=10)
    device = SimulatedMeter(device_map, unit_id=1)
    expected = {"voltage_l1": 230.5, "voltage_l2": 231.5, "voltage_l3": 229.5, "frequency": 50.0}
    device.set_values(expected)
    async with serve_modbus_tcp([device]) as server, tcp_bus(server.port) as bus:
        reader = ModbusReader("m", bus, 1, gateway_map)
        assert [(r.address, r.count) for r in reader.plan] == [(0, 14)]  # merged over the hole
        refusals = []
        for _ in range(4):
            before = bus.health.errors["exception"]
            assert await reader.read() == expected
            refusals.append(bus.health.errors["exception"] - before)
            device.reset_counters()
        assert [(r.address, r.count) for r in reader.plan] == [(0, 6), (8, 6)]
        assert await reader.read() == expected
    assert refusals[0] >= 1 and refusals[-2:] == [0, 0]  # learnt, then never refused again
    assert device.served == [("input", 0, 6), ("input", 8, 6)]
    assert Span("input", 0, 14) in reader.refused


async def test_splits_are_remembered_per_meter() -> None:
    registers = [f32("voltage_l1", 0), f32("voltage_l2", 4)]
    holey_map, gateway_map = maps(registers, holes=[(2, 3)], max_gap=10)
    whole_map, _ = maps(registers, holes=[], max_gap=10)
    holey, whole = SimulatedMeter(holey_map, unit_id=1), SimulatedMeter(whole_map, unit_id=2)
    async with serve_modbus_tcp([holey, whole]) as server, tcp_bus(server.port) as bus:
        first = ModbusReader("a", bus, 1, gateway_map)
        second = ModbusReader("b", bus, 2, gateway_map)
        for _ in range(2):
            await first.read()
            await second.read()
    assert [(r.address, r.count) for r in first.plan] == [(0, 2), (4, 2)]
    assert [(r.address, r.count) for r in second.plan] == [(0, 6)]
    assert whole.served == [("input", 0, 6)] * 2


async def test_an_optional_register_the_device_lacks_is_left_out_for_good() -> None:
    registers = [f32("voltage_l1", 0), f32("current_n", 2, optional=True), f32("frequency", 4)]
    device_map, gateway_map = maps(registers, holes=[(2, 3)], max_gap=10)
    device = SimulatedMeter(device_map, unit_id=1)
    device.set_values({"voltage_l1": 230.0, "frequency": 50.0})
    async with serve_modbus_tcp([device]) as server, tcp_bus(server.port) as bus:
        reader = ModbusReader("m", bus, 1, gateway_map)
        assert await reader.read() == {"voltage_l1": 230.0, "frequency": 50.0}
        refused = bus.health.errors["exception"]
        device.reset_counters()
        assert await reader.read() == {"voltage_l1": 230.0, "frequency": 50.0}
    assert reader.absent == {"current_n"}
    assert bus.health.errors["exception"] == refused  # no more refusals
    assert device.served == [("input", 0, 2), ("input", 4, 2)]


async def test_a_required_register_the_device_lacks_fails_the_read_naming_it() -> None:
    registers = [f32("voltage_l1", 0), f32("energy_active_import", 2), f32("frequency", 4)]
    device_map, gateway_map = maps(registers, holes=[(2, 3)], max_gap=10)
    device = SimulatedMeter(device_map, unit_id=1)
    async with serve_modbus_tcp([device]) as server, tcp_bus(server.port) as bus:
        reader = ModbusReader("m", bus, 1, gateway_map)
        with pytest.raises(MeterReadError) as first:
            await reader.read()
        sent = bus.transactions
        with pytest.raises(MeterReadError) as again:
            await reader.read()
        assert bus.transactions == sent + 1  # tried alone, first, and nothing else wasted
    for error in (first.value, again.value):
        assert error.kind == "exception"
        assert "input register 2 (energy_active_import" in str(error)
        assert "illegal data address" in str(error)


@st.composite
def devices_with_holes(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[tuple[int, int]], int]:
    """f32 registers with gaps; some gaps are holes the device refuses (unknown to the map)."""
    registers: list[dict[str, Any]] = []
    holes: list[tuple[int, int]] = []
    address = 0
    for channel in CHANNELS[: draw(st.integers(2, 16))]:
        gap = draw(st.integers(0, 4))
        if gap and draw(st.booleans()):
            first = address + draw(st.integers(0, gap - 1))
            holes.append((first, draw(st.integers(first, address + gap - 1))))
        address += gap
        registers.append(f32(channel, address))
        address += 2
    return registers, holes, draw(st.integers(6, 40))


@given(devices_with_holes())
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
async def test_any_device_is_read_right_and_the_learnt_plan_is_the_fewest_requests(
    drawn: tuple[list[dict[str, Any]], list[tuple[int, int]], int],
) -> None:
    registers, holes, max_count = drawn
    device_map, gateway_map = maps(
        registers, holes, max_gap=10, max_registers_per_request=max_count
    )
    device = SimulatedMeter(device_map, unit_id=1)
    values = {r["channel"]: float(i) + 0.5 for i, r in enumerate(registers)}
    device.set_values(values)
    async with serve_modbus_tcp([device]) as server, tcp_bus(server.port) as bus:
        reader = ModbusReader("m", bus, 1, gateway_map)
        for _ in range(len(registers) + 1):
            before = bus.health.errors["exception"]
            assert await reader.read() == values
            if bus.health.errors["exception"] == before:
                break
        else:
            pytest.fail("still refused after as many reads as registers")
    truth = plan_reads(
        device_map.registers,
        max_count=max_count,
        max_gap=10,
        forbidden=device_map.forbidden,
    )
    assert len(reader.plan) == len(truth)
