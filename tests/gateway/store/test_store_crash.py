"""kill -9 at random moments: every sample reported committed is there afterwards, in order."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.store.database import Store
from tests.paths import REPO

KILLS = int(os.environ.get("MG_CRASH_KILLS", "20"))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_loses_no_committed_sample(tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite3"
    rng = random.Random(1234)
    committed: dict[int, tuple[str, int]] = {}
    for round_ in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.gateway.store.crash_writer", str(path), str(round_)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.02, 0.25))
            child.send_signal(signal.SIGKILL)
            output = child.stdout.read()
        finally:
            child.kill()
            child.wait(timeout=10)
            if child.stdout is not None:
                child.stdout.close()
        for line in output.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] != "None":  # a line cut by the kill is ignored
                committed[int(parts[0])] = (parts[1], int(parts[2]))
    assert len(committed) > KILLS, "the writer committed too little to prove anything"
    with Store(path) as store:
        rows = {s.rowid: s.sample for s in store.read_all(0, limit=10**7)}
        for meter in ("m1", "m2", "m3"):
            times = [s.ts_ms for s in rows.values() if s.meter == meter]
            assert times == sorted(times) and len(set(times)) == len(times)
    missing = [
        sid
        for sid, (meter, ts) in committed.items()
        if sid not in rows or rows[sid].meter != meter or rows[sid].ts_ms != ts
    ]
    assert missing == []
