"""Child process for the crash test: appends batches forever, printing each committed id."""

from __future__ import annotations

import random
import sys

from core.sample import Sample
from gateway.store.database import Store


def main(path: str, seed: int) -> None:
    rng = random.Random(seed)
    store = Store(path)
    meters = ["m1", "m2", "m3"]
    ts = {m: (store.last_ts(m) or 1_767_225_600_000) for m in meters}
    print("ready", flush=True)
    while True:
        batch = []
        for _ in range(rng.randint(1, 50)):
            meter = rng.choice(meters)
            ts[meter] += rng.randint(1, 1000)
            batch.append(Sample(meter, ts[meter], {"energy_active_import": float(ts[meter])}))
        ids = store.append(batch)
        lines = [f"{i} {s.meter} {s.ts_ms}" for i, s in zip(ids, batch, strict=True)]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
