"""Requests per full read of every built-in map: the planner's plan against two yardsticks.

- `minimum`: the requests if every gap between needed registers could be read through, so
  only the device's per-request limit and forbidden ranges split blocks (the number of
  maximal blocks ignoring the gap limit). A plan above it pays for the map's `max_gap`, the
  price of not reading addresses we cannot vouch for.
- `naive`: one request per value, what per-register readers (ThingsBoard, mbmd) send.

Pure computation (no I/O): it plans exactly what drivers.modbus.reader.ModbusReader plans for a
device that refuses nothing, scale-factor registers included.
"""

from __future__ import annotations

from drivers.modbus.planner import ReadRequest, plan_reads
from drivers.modbus.register_map import MAX_ADDRESS, RegisterMap, builtin_models, load_builtin


def full_plan(register_map: RegisterMap) -> list[ReadRequest]:
    return plan_reads(
        register_map.registers_to_read(),
        max_count=register_map.max_registers_per_request,
        max_gap=register_map.max_gap,
        forbidden=register_map.forbidden,
    )


def gapless_minimum(register_map: RegisterMap) -> int:
    """Requests if any gap could be read through (request limit and forbidden ranges kept)."""
    plan = plan_reads(
        register_map.registers_to_read(),
        max_count=register_map.max_registers_per_request,
        max_gap=MAX_ADDRESS,
        forbidden=register_map.forbidden,
    )
    return len(plan)


def naive_requests(register_map: RegisterMap) -> int:
    """One request per distinct register location (a value read for two channels counts once)."""
    return len({(spec.table, spec.address) for spec in register_map.registers_to_read()})


def plan_rows() -> list[tuple[str, int, int]]:
    """(model, requests per full read, gapless minimum) for every built-in map, by name."""
    rows = []
    for model in builtin_models():
        register_map = load_builtin(model)
        rows.append((model, len(full_plan(register_map)), gapless_minimum(register_map)))
    return rows


def main() -> None:
    print(f"{'model':<10} {'requests':>8} {'minimum':>8} {'naive':>6}")
    for model, requests, minimum in plan_rows():
        naive = naive_requests(load_builtin(model))
        print(f"{model:<10} {requests:>8} {minimum:>8} {naive:>6}")


if __name__ == "__main__":
    main()
