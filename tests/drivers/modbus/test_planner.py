"""The read planner: every register covered, limits kept, holes avoided, fewest requests."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from core.channels import CHANNEL_UNITS
from drivers.modbus.planner import ReadRequest, plan_map, plan_reads
from drivers.modbus.register_map import (
    AddressRange,
    RegisterMap,
    RegisterSpec,
    RegisterType,
    Table,
    load_builtin,
)

CHANNELS = sorted(CHANNEL_UNITS)
TYPE_OF_WIDTH: dict[int, RegisterType] = {1: "u16", 2: "f32", 4: "f64"}
TABLE_SETS: list[list[Table]] = [["input"], ["holding"], ["input", "holding"]]


@dataclass(frozen=True)
class Case:
    registers: list[RegisterSpec]
    forbidden: list[AddressRange]
    max_count: int
    max_gap: int


@st.composite
def cases(draw: st.DrawFn, max_registers: int = len(CHANNELS)) -> Case:
    """Non-overlapping registers in one or two tables, with gaps and forbidden holes."""
    max_count = draw(st.integers(4, 40))
    max_gap = draw(st.integers(0, 12))
    registers: list[RegisterSpec] = []
    forbidden: list[AddressRange] = []
    names = iter(CHANNELS[: draw(st.integers(1, max_registers))])
    for table in draw(st.sampled_from(TABLE_SETS)):
        address = draw(st.integers(0, 20))
        for channel in names:
            kind = draw(st.sampled_from(["register", "register", "gap", "hole"]))
            if kind == "gap":
                address += draw(st.integers(1, 30))
            elif kind == "hole":
                length = draw(st.integers(1, 6))
                forbidden.append(
                    AddressRange(table=table, first=address, last=address + length - 1)
                )
                address += length
            width = draw(st.sampled_from(sorted(TYPE_OF_WIDTH)))
            registers.append(
                RegisterSpec(
                    channel=channel, address=address, table=table, type=TYPE_OF_WIDTH[width]
                )
            )
            address += width
            if draw(st.booleans()):
                break  # the rest go to the next table, if any
    return Case(registers, forbidden, max_count, max_gap)


def _plan(case: Case) -> list[ReadRequest]:
    return plan_reads(
        case.registers, max_count=case.max_count, max_gap=case.max_gap, forbidden=case.forbidden
    )


@given(cases())
@settings(max_examples=300, deadline=None)
def test_a_plan_reads_every_register_once_within_the_rules(case: Case) -> None:
    plan = _plan(case)
    served = [register for request in plan for register in request.registers]
    assert sorted(served, key=lambda r: r.channel) == sorted(
        case.registers, key=lambda r: r.channel
    )
    for request in plan:
        assert 1 <= request.count <= case.max_count
        for register in request.registers:
            assert register.table == request.table
            assert request.address <= register.address and register.end <= request.end
        for hole in case.forbidden:
            assert not hole.overlaps(request.table, request.address, request.end)
        # tight at both ends, and no run of unneeded registers longer than max_gap
        needed = {a for r in request.registers for a in range(r.address, r.end)}
        assert request.address in needed and request.end - 1 in needed
        run = 0
        for address in range(request.address, request.end):
            run = 0 if address in needed else run + 1
            assert run <= case.max_gap


@given(cases(), st.randoms(use_true_random=False))
@settings(max_examples=100, deadline=None)
def test_a_plan_does_not_depend_on_the_order_of_the_map(case: Case, rnd: random.Random) -> None:
    shuffled = list(case.registers)
    rnd.shuffle(shuffled)
    again = plan_reads(
        shuffled, max_count=case.max_count, max_gap=case.max_gap, forbidden=case.forbidden
    )
    assert again == _plan(case)


def _fewest_requests(case: Case) -> int:
    """Exhaustive: the fewest valid requests covering everything (breadth-first on subsets).

    A candidate request runs from some register's start to some register's end, has at most
    max_count registers, no forbidden address, and no run of addresses outside the registers
    it wholly contains longer than max_gap. Nothing here knows how the planner works.
    """
    registers = case.registers
    everything = (1 << len(registers)) - 1
    candidates = set()
    for start in {r.address for r in registers}:
        for end in {r.end for r in registers}:
            for table in {r.table for r in registers}:
                if not 0 < end - start <= case.max_count:
                    continue
                if any(h.overlaps(table, start, end) for h in case.forbidden):
                    continue
                inside = [
                    i
                    for i, r in enumerate(registers)
                    if r.table == table and start <= r.address and r.end <= end
                ]
                needed = {a for i in inside for a in range(registers[i].address, registers[i].end)}
                run = longest = 0
                for address in range(start, end):
                    run = 0 if address in needed else run + 1
                    longest = max(longest, run)
                if inside and longest <= case.max_gap:
                    candidates.add(sum(1 << i for i in inside))
    depth = {0: 0}
    queue = deque([0])
    while queue:
        state = queue.popleft()
        if state == everything:
            return depth[state]
        for mask in candidates:
            following = state | mask
            if following not in depth:
                depth[following] = depth[state] + 1
                queue.append(following)
    raise AssertionError("no cover at all: the case generator is wrong")


@given(cases(max_registers=7))
@settings(max_examples=300, deadline=None)
def test_a_plan_has_the_fewest_requests_possible(case: Case) -> None:
    assert len(_plan(case)) == _fewest_requests(case)


def test_the_whole_sdm630_takes_three_requests() -> None:
    plan = plan_map(load_builtin("sdm630"))
    assert [(r.table, r.address, r.count) for r in plan] == [
        ("input", 0x0000, 0x0050),
        ("input", 0x00C8, 0x00E2 - 0x00C8),
        ("input", 0x0156, 0x0160 - 0x0156),
    ]


def test_a_forbidden_hole_splits_what_would_merge() -> None:
    base = {
        "model": "x",
        "max_gap": 10,
        "registers": [
            {"channel": "voltage_l1", "address": 0, "table": "input", "type": "f32"},
            {"channel": "voltage_l2", "address": 6, "table": "input", "type": "f32"},
        ],
    }
    assert len(plan_map(RegisterMap.model_validate(base))) == 1
    hole = {"forbidden": [{"table": "input", "first": 3, "last": 3}]}
    plan = plan_map(RegisterMap.model_validate(base | hole))
    assert [(r.address, r.count) for r in plan] == [(0, 2), (6, 2)]


def test_a_subset_of_channels_reads_less() -> None:
    plan = plan_map(load_builtin("sdm630"), ["voltage_l1", "energy_active_import"])
    assert [(r.address, r.count) for r in plan] == [(0x0000, 2), (0x0048, 2)]
