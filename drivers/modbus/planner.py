"""Plan one meter read: merge the registers it needs into the fewest Modbus requests.

Invariants of every plan (checked by tests/drivers/test_planner.py with hypothesis):
- every needed register lies wholly inside exactly one request of its own table;
- no request is longer than `max_count` registers;
- no request touches a forbidden address;
- no request wholly contains a span the device refused (`unreadable`, learnt at run time from
  exception 2 answers: drivers.modbus.reader splits such a block and plans around it afterwards);
- inside a request, every run of registers nobody needs is at most `max_gap` long;
- the number of requests is minimal under those rules.

Why greedy is minimal: with non-overlapping registers sorted by address, any request that holds
two registers also holds every register between them, so an optimal plan can be taken to read
runs of consecutive registers; and a sub-run of a feasible run is feasible (shorter span, a
subset of its gaps, no refused span the longer run did not contain). For such "interval
partition" problems, extending each request as far as it goes before starting the next one is
optimal (the classic exchange argument). The tests compare against an exhaustive search on
small inputs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from drivers.modbus.register_map import AddressRange, RegisterMap, RegisterSpec

#: Tables are planned in this order, so a plan is the same whatever order the map lists them.
TABLE_ORDER = ("input", "holding")


@dataclass(frozen=True)
class ReadRequest:
    """One Modbus transaction: `count` registers of `table` from `address`."""

    table: str
    address: int
    count: int
    #: The registers this request serves, by address.
    registers: tuple[RegisterSpec, ...]

    @property
    def end(self) -> int:
        return self.address + self.count


class Span(NamedTuple):
    """Addresses [start, end) of one table that a device refused to read in one request."""

    table: str
    start: int
    end: int


def request_for(table: str, registers: Sequence[RegisterSpec]) -> ReadRequest:
    """The tightest request holding `registers` (non-empty, one table, sorted by address)."""
    start = min(r.address for r in registers)
    end = max(r.end for r in registers)
    return ReadRequest(table, start, end - start, tuple(registers))


def plan_reads(
    registers: Iterable[RegisterSpec],
    *,
    max_count: int,
    max_gap: int,
    forbidden: Sequence[AddressRange] = (),
    unreadable: Collection[Span] = (),
) -> list[ReadRequest]:
    """The fewest requests covering `registers` (pure and deterministic).

    No request wholly contains a span of `unreadable`; a register whose own span is unreadable
    cannot be planned at all (ValueError: the caller leaves it out).
    """
    if max_count < 1 or max_gap < 0:
        raise ValueError("max_count must be >= 1 and max_gap >= 0")
    by_table: dict[str, list[RegisterSpec]] = {}
    for register in registers:
        if register.words > max_count:
            raise ValueError(f"{register.channel} is wider than max_count={max_count}")
        if any(hole.overlaps(register.table, register.address, register.end) for hole in forbidden):
            raise ValueError(f"{register.channel} lies in a forbidden range")
        if _contains_refused(unreadable, register.table, register.address, register.end):
            raise ValueError(f"{register.channel} was refused by the device")
        by_table.setdefault(register.table, []).append(register)
    plan: list[ReadRequest] = []
    for table in sorted(by_table, key=_table_rank):
        ordered = sorted(by_table[table], key=lambda r: (r.address, r.end, r.channel))
        refused = [span for span in unreadable if span.table == table]
        plan.extend(
            _plan_table(
                table,
                ordered,
                max_count=max_count,
                max_gap=max_gap,
                forbidden=forbidden,
                refused=refused,
            )
        )
    return plan


def plan_map(register_map: RegisterMap, channels: Iterable[str] | None = None) -> list[ReadRequest]:
    """Plan a read of `channels` (default: every channel of the map)."""
    wanted = None if channels is None else set(channels)
    registers = [r for r in register_map.registers if wanted is None or r.channel in wanted]
    if wanted is not None and len(registers) != len(wanted):
        missing = wanted - {r.channel for r in registers}
        raise KeyError(f"{register_map.model} has no channel(s) {sorted(missing)}")
    return plan_reads(
        registers,
        max_count=register_map.max_registers_per_request,
        max_gap=register_map.max_gap,
        forbidden=register_map.forbidden,
    )


def _table_rank(table: str) -> tuple[int, str]:
    return (TABLE_ORDER.index(table) if table in TABLE_ORDER else len(TABLE_ORDER), table)


def _plan_table(
    table: str,
    ordered: list[RegisterSpec],
    *,
    max_count: int,
    max_gap: int,
    forbidden: Sequence[AddressRange],
    refused: Sequence[Span],
) -> Iterable[ReadRequest]:
    start = ordered[0].address
    end = ordered[0].end
    members = [ordered[0]]
    for register in ordered[1:]:
        new_end = max(end, register.end)
        gap = register.address - end
        fits = (
            gap <= max_gap
            and new_end - start <= max_count
            and not (
                gap > 0 and any(hole.overlaps(table, end, register.address) for hole in forbidden)
            )
            and not _contains_refused(refused, table, start, new_end)
        )
        if fits:
            end = new_end
            members.append(register)
            continue
        yield ReadRequest(table, start, end - start, tuple(members))
        start, end, members = register.address, register.end, [register]
    yield ReadRequest(table, start, end - start, tuple(members))


def _contains_refused(refused: Iterable[Span], table: str, start: int, end: int) -> bool:
    return any(s.table == table and start <= s.start and s.end <= end for s in refused)
