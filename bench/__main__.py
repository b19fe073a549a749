"""`python -m bench` (or ./dev.sh bench): run every benchmark, print one table."""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Row:
    name: str
    value: float
    unit: str
    target: str
    ok: bool | None


def _store_rows() -> list[Row]:
    from bench.store_ingest import measure_ingest

    figures = measure_ingest()
    return [
        Row(
            "store: durable ingest (batches of 1000, FULL)",
            figures["samples_per_s"],
            "samples/s",
            ">= 50000",
            figures["samples_per_s"] >= 50_000,
        ),
        Row(
            "store: single-sample commits (fsync each)",
            figures["commits_per_s"],
            "commits/s",
            "-",
            None,
        ),
    ]


def _wattics_rows() -> list[Row]:
    from bench.wattics_drain import measure_drain

    loopback = asyncio.run(measure_drain(n_packets=5000, concurrency=4))
    wan = asyncio.run(measure_drain(n_packets=400, concurrency=4, rounds=3, latency_secs=0.01))
    rows = [
        Row(
            "wattics: drain to local fake (loopback)",
            loopback["uplink_packets_per_s"],
            "packets/s",
            "-",
            None,
        ),
        Row(
            "wattics: bare aiohttp loop, same packets",
            loopback["bare_packets_per_s"],
            "packets/s",
            "-",
            None,
        ),
    ]
    for label, figures in (("loopback", loopback), ("fake answers in 10 ms", wan)):
        ratio = figures["ratio"]
        rows.append(
            Row(f"wattics: uplink / bare ratio ({label})", ratio, "x", ">= 0.8", ratio >= 0.8)
        )
    return rows


SECTIONS: list[Callable[[], list[Row]]] = [_store_rows, _wattics_rows]


def main() -> int:
    rows: list[Row] = []
    for section in SECTIONS:
        rows.extend(section())
    print(f"meter-gateway benchmarks on {platform.machine()}, Python {platform.python_version()}")
    width = max(len(r.name) for r in rows)
    print(f"{'benchmark':<{width}}  {'value':>12}  {'unit':<10} {'target':<10} ok")
    for r in rows:
        mark = "-" if r.ok is None else ("yes" if r.ok else "NO")
        print(f"{r.name:<{width}}  {r.value:>12,.2f}  {r.unit:<10} {r.target:<10} {mark}")
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
