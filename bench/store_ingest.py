"""Durable ingest rate: samples/s committed with synchronous=FULL in batched transactions."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from core.sample import Sample
from gateway.store.database import Store

SDM630_LIKE = {
    **{f"voltage_l{i}": 230.0 + i for i in (1, 2, 3)},
    **{f"current_l{i}": 5.0 + i for i in (1, 2, 3)},
    **{f"power_active_l{i}": 1000.0 + i for i in (1, 2, 3)},
    "power_active": 3006.0,
    "frequency": 50.0,
    "energy_active_import": 123_456_789.0,
    "energy_active_export": 1_234.0,
}


def measure_ingest(total: int = 200_000, batch: int = 1000, meters: int = 20) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory, Store(Path(directory) / "b.sqlite3") as store:
        start_ms = 1_767_225_600_000
        began = time.perf_counter()
        for first in range(0, total, batch):
            store.append(
                [
                    Sample(f"m{i % meters}", start_ms + i * 10, SDM630_LIKE)
                    for i in range(first, first + batch)
                ]
            )
        elapsed = time.perf_counter() - began
        single_began = time.perf_counter()
        singles = 300
        for i in range(singles):
            store.append([Sample("single", start_ms + i, SDM630_LIKE)])
        single_elapsed = time.perf_counter() - single_began
    return {
        "samples_per_s": total / elapsed,
        "commits_per_s": singles / single_elapsed,
    }
